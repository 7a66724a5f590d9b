package io.polybridge.topicreader;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import org.apache.avro.Schema;

/**
 * Writer schemas fetched by id from a Schema Registry's Confluent API ({@code GET
 * /schemas/ids/{id}}), once per id. Jackson comes with Avro; the HTTP client with the JDK.
 */
final class RegistrySchemas {
  private static final Duration TIMEOUT = Duration.ofSeconds(10);

  private final String url;
  private final HttpClient http = HttpClient.newBuilder().connectTimeout(TIMEOUT).build();
  private final ObjectMapper json = new ObjectMapper();
  private final Map<Integer, Schema> byId = new HashMap<>();

  RegistrySchemas(String url) {
    this.url = url.endsWith("/") ? url.substring(0, url.length() - 1) : url;
  }

  /** The schema registered under {@code id}; an IOException says why it is not available. */
  Schema byId(int id) throws IOException {
    Schema found = byId.get(id);
    if (found != null) {
      return found;
    }
    HttpRequest request =
        HttpRequest.newBuilder(URI.create(url + "/schemas/ids/" + id))
            .timeout(TIMEOUT)
            .header("Accept", "application/vnd.schemaregistry.v1+json, application/json")
            .GET()
            .build();
    HttpResponse<String> response;
    try {
      response = http.send(request, HttpResponse.BodyHandlers.ofString());
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IOException("interrupted fetching schema id " + id, e);
    }
    if (response.statusCode() != 200) {
      throw new IOException(
          "schema id " + id + ": registry " + url + " answered HTTP " + response.statusCode()
              + ": " + response.body());
    }
    JsonNode body = json.readTree(response.body());
    JsonNode type = body.get("schemaType");
    if (type != null && !type.asText().equals("AVRO")) {
      throw new IOException("schema id " + id + " is " + type.asText() + ", not AVRO");
    }
    Schema schema = new Schema.Parser().parse(body.get("schema").asText());
    byId.put(id, schema);
    return schema;
  }
}
