package io.polybridge.topicreader;

import java.io.BufferedOutputStream;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericEnumSymbol;
import org.apache.avro.generic.GenericFixed;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.IndexedRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Reads topics polybridge wrote, in Avro single-object encoding or with Schema Registry
 * framing, and prints every committed record as one JSON line.
 *
 * <pre>
 * java -jar target/topic-reader.jar [--timeout-s N] BOOTSTRAP SCHEMA_DIR TOPIC [TOPIC...]
 * java -jar target/topic-reader.jar [--timeout-s N] --registry URL BOOTSTRAP TOPIC [TOPIC...]
 * </pre>
 *
 * <p>Every partition of every topic is assigned and read from the beginning with {@code
 * isolation.level=read_committed} up to the end offsets taken at start (no consumer group,
 * no offset commits). Each value ({@code C3 01}, 8-byte CRC-64-AVRO fingerprint, body) is
 * decoded by Avro's {@link BinaryMessageDecoder}, which picks the writer schema by the
 * fingerprint among every {@code .avsc} in SCHEMA_DIR (as {@code polybridge schemas export}
 * writes them). With {@code --registry URL} (the registry's Confluent API, e.g. {@code
 * http://host:8081} or Apicurio's {@code .../apis/ccompat/v7}) values are Confluent-framed
 * ({@code 00}, 4-byte big-endian schema id, body) and the writer schema is fetched by id
 * from the registry ({@link RegistrySchemas}). There is no reader schema: each value is read
 * with its own writer schema.
 *
 * <p>Output line: {@code {"topic", "partition", "offset", "key", "event_id", "stream",
 * "schema", "value"}}: key and headers as UTF-8 strings (null when absent), schema the full
 * name of the writer schema, value the record as JSON (unions unwrapped, enums as their
 * symbol, timestamps as the long the schema holds, bytes and fixed as base64, non-finite
 * doubles as the strings "NaN", "Infinity", "-Infinity"; a tombstone is null).
 *
 * <p>Exit status: 0 when every record decoded; 1 on the first value that does not decode
 * (unknown fingerprint or schema id, bad header, corrupt body), naming topic, partition and
 * offset; 2 on
 * bad arguments or schemas; 3 when a topic is missing or the end is not reached in time.
 */
public final class TopicReader {
  static final String EVENT_ID_HEADER = "polybridge.event_id";
  static final String STREAM_HEADER = "polybridge.stream";

  private TopicReader() {}

  /** A failure with its exit status and message for stderr. */
  static final class Failure extends Exception {
    final int status;

    Failure(int status, String message, Throwable cause) {
      super(message, cause);
      this.status = status;
    }

    Failure(int status, String message) {
      this(status, message, null);
    }
  }

  public static void main(String[] args) {
    PrintStream out =
        new PrintStream(
            new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16),
            false,
            StandardCharsets.UTF_8);
    int status;
    try {
      run(args, out);
      status = 0;
    } catch (Failure failure) {
      out.flush();
      System.err.println("topic-reader: " + failure.getMessage());
      status = failure.status;
    } catch (RuntimeException e) {
      out.flush();
      System.err.println("topic-reader: unexpected failure: " + e);
      e.printStackTrace();
      status = 1;
    }
    out.flush();
    System.exit(status);
  }

  static final String USAGE =
      "usage: TopicReader [--timeout-s N] BOOTSTRAP SCHEMA_DIR TOPIC [TOPIC...]\n"
          + "       TopicReader [--timeout-s N] --registry URL BOOTSTRAP TOPIC [TOPIC...]";

  static void run(String[] args, PrintStream out) throws Failure {
    long timeoutS = 60;
    String registryUrl = null;
    int first = 0;
    while (args.length - first >= 2 && args[first].startsWith("--")) {
      String option = args[first];
      String value = args[first + 1];
      if (option.equals("--timeout-s")) {
        try {
          timeoutS = Long.parseLong(value);
        } catch (NumberFormatException e) {
          throw new Failure(2, "--timeout-s wants a whole number of seconds, not " + value);
        }
      } else if (option.equals("--registry")) {
        registryUrl = value;
      } else {
        throw new Failure(2, "unknown option " + option + "\n" + USAGE);
      }
      first += 2;
    }
    int positional = registryUrl == null ? 3 : 2;
    if (args.length - first < positional) {
      throw new Failure(2, USAGE);
    }
    String bootstrap = args[first];
    List<String> topics = List.of(args).subList(first + positional - 1, args.length);

    Decoders decoders;
    if (registryUrl == null) {
      Path schemaDir = Path.of(args[first + 1]);
      BinaryMessageDecoder<GenericRecord> decoder =
          new BinaryMessageDecoder<>(GenericData.get(), null);
      int schemas = addSchemas(decoder, schemaDir);
      System.err.printf("topic-reader: %d schemas from %s%n", schemas, schemaDir);
      decoders = new Decoders(decoder, null);
    } else {
      decoders = new Decoders(null, new RegistrySchemas(registryUrl));
    }

    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    props.put(ConsumerConfig.ALLOW_AUTO_CREATE_TOPICS_CONFIG, "false");
    props.put(ConsumerConfig.CLIENT_ID_CONFIG, "polybridge-topic-reader");
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);

    long deadline = System.nanoTime() + Duration.ofSeconds(timeoutS).toNanos();
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
      List<TopicPartition> partitions = new ArrayList<>();
      for (String topic : topics) {
        List<PartitionInfo> infos = consumer.partitionsFor(topic, Duration.ofSeconds(timeoutS));
        if (infos == null || infos.isEmpty()) {
          throw new Failure(3, "topic " + topic + " does not exist on " + bootstrap);
        }
        for (PartitionInfo info : infos) {
          partitions.add(new TopicPartition(topic, info.partition()));
        }
      }
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
      // read_committed: the end offsets are the last stable offsets.
      Map<TopicPartition, Long> ends =
          consumer.endOffsets(partitions, Duration.ofSeconds(timeoutS));
      long records = 0;
      while (!allReached(consumer, ends)) {
        if (System.nanoTime() > deadline) {
          String where = behind(consumer, ends);
          throw new Failure(3, "end offsets not reached within " + timeoutS + " s: " + where);
        }
        for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(200))) {
          Long end = ends.get(new TopicPartition(record.topic(), record.partition()));
          if (end != null && record.offset() >= end) {
            continue; // committed after the start: beyond the ends this run reads to
          }
          printRecord(out, record, decode(decoders, record));
          records++;
        }
      }
      System.err.printf(
          "topic-reader: %d records from %d partitions%n", records, partitions.size());
    } catch (org.apache.kafka.common.KafkaException e) {
      throw new Failure(3, "Kafka: " + e, e);
    }
  }

  /** Register every `.avsc` in `dir` with the decoder; how many. */
  static int addSchemas(BinaryMessageDecoder<GenericRecord> decoder, Path dir) throws Failure {
    Map<Long, String> seen = new HashMap<>();
    List<Path> files = new ArrayList<>();
    try (DirectoryStream<Path> stream = Files.newDirectoryStream(dir, "*.avsc")) {
      stream.forEach(files::add);
    } catch (IOException e) {
      throw new Failure(2, "cannot list schema directory " + dir + ": " + e, e);
    }
    if (files.isEmpty()) {
      throw new Failure(2, "no .avsc files in " + dir + " (polybridge schemas export DIR)");
    }
    files.sort(null);
    for (Path file : files) {
      Schema schema;
      try {
        // One parser per file: each exported file is self-contained, and files repeat the
        // named types they share.
        schema = new Schema.Parser().parse(file.toFile());
      } catch (IOException | RuntimeException e) {
        throw new Failure(2, "cannot parse " + file + ": " + e, e);
      }
      long fingerprint = SchemaNormalization.parsingFingerprint64(schema);
      String other = seen.putIfAbsent(fingerprint, schema.getFullName());
      if (other != null && !other.equals(schema.getFullName())) {
        throw new Failure(2, file + " has the fingerprint of " + other);
      }
      decoder.addSchema(schema);
    }
    return files.size();
  }

  /** Single-object decoding by fingerprint, or Confluent decoding by registry id. */
  record Decoders(BinaryMessageDecoder<GenericRecord> singleObject, RegistrySchemas registry) {}

  static GenericRecord decode(Decoders decoders, ConsumerRecord<byte[], byte[]> record)
      throws Failure {
    byte[] value = record.value();
    if (value == null) {
      return null;
    }
    try {
      if (decoders.registry() == null) {
        return decoders.singleObject().decode(value);
      }
      if (value.length < 5 || value[0] != 0) {
        throw new IOException("not Confluent-framed (00 + 4-byte schema id)");
      }
      int id = ByteBuffer.wrap(value, 1, 4).getInt();
      Schema schema = decoders.registry().byId(id);
      BinaryDecoder body = DecoderFactory.get().binaryDecoder(value, 5, value.length - 5, null);
      GenericRecord datum = new GenericDatumReader<GenericRecord>(schema).read(null, body);
      if (!body.isEnd()) {
        throw new IOException("bytes left after the record of schema id " + id);
      }
      return datum;
    } catch (IOException | RuntimeException e) {
      String head = hex(value, 10);
      throw new Failure(
          1,
          String.format(
              "cannot decode %s partition %d offset %d (first bytes %s): %s",
              record.topic(), record.partition(), record.offset(), head, e),
          e);
    }
  }

  static boolean allReached(KafkaConsumer<?, ?> consumer, Map<TopicPartition, Long> ends) {
    for (Map.Entry<TopicPartition, Long> end : ends.entrySet()) {
      if (consumer.position(end.getKey()) < end.getValue()) {
        return false;
      }
    }
    return true;
  }

  static String behind(KafkaConsumer<?, ?> consumer, Map<TopicPartition, Long> ends) {
    StringBuilder text = new StringBuilder();
    for (Map.Entry<TopicPartition, Long> end : ends.entrySet()) {
      long position = consumer.position(end.getKey());
      if (position < end.getValue()) {
        text.append(end.getKey()).append(" at ").append(position);
        text.append(" of ").append(end.getValue()).append("; ");
      }
    }
    return text.toString();
  }

  static void printRecord(
      PrintStream out, ConsumerRecord<byte[], byte[]> record, GenericRecord value) {
    StringBuilder line = new StringBuilder(512);
    line.append("{\"topic\":");
    string(line, record.topic());
    line.append(",\"partition\":").append(record.partition());
    line.append(",\"offset\":").append(record.offset());
    line.append(",\"key\":");
    string(line, record.key() == null ? null : new String(record.key(), StandardCharsets.UTF_8));
    line.append(",\"event_id\":");
    string(line, header(record, EVENT_ID_HEADER));
    line.append(",\"stream\":");
    string(line, header(record, STREAM_HEADER));
    line.append(",\"schema\":");
    string(line, value == null ? null : value.getSchema().getFullName());
    line.append(",\"value\":");
    json(line, value);
    line.append('}');
    out.println(line);
  }

  static String header(ConsumerRecord<?, ?> record, String name) {
    Header header = record.headers().lastHeader(name);
    if (header == null || header.value() == null) {
      return null;
    }
    return new String(header.value(), StandardCharsets.UTF_8);
  }

  /** A decoded Avro datum (GenericData representation) as JSON. */
  static void json(StringBuilder out, Object datum) {
    if (datum == null) {
      out.append("null");
    } else if (datum instanceof IndexedRecord record) {
      out.append('{');
      List<Schema.Field> fields = record.getSchema().getFields();
      for (int i = 0; i < fields.size(); i++) {
        if (i > 0) {
          out.append(',');
        }
        string(out, fields.get(i).name());
        out.append(':');
        json(out, record.get(fields.get(i).pos()));
      }
      out.append('}');
    } else if (datum instanceof Map<?, ?> map) {
      out.append('{');
      boolean first = true;
      for (Map.Entry<?, ?> entry : map.entrySet()) {
        if (!first) {
          out.append(',');
        }
        first = false;
        string(out, entry.getKey().toString());
        out.append(':');
        json(out, entry.getValue());
      }
      out.append('}');
    } else if (datum instanceof Collection<?> items) {
      out.append('[');
      boolean first = true;
      for (Object item : items) {
        if (!first) {
          out.append(',');
        }
        first = false;
        json(out, item);
      }
      out.append(']');
    } else if (datum instanceof CharSequence || datum instanceof GenericEnumSymbol<?>) {
      string(out, datum.toString());
    } else if (datum instanceof Boolean || datum instanceof Integer || datum instanceof Long) {
      out.append(datum);
    } else if (datum instanceof Float || datum instanceof Double) {
      // A float is widened first, so it prints as the double it equals.
      double number = ((Number) datum).doubleValue();
      if (Double.isFinite(number)) {
        out.append(number);
      } else {
        string(out, Double.toString(number));
      }
    } else if (datum instanceof ByteBuffer bytes) {
      ByteBuffer copy = bytes.duplicate();
      byte[] raw = new byte[copy.remaining()];
      copy.get(raw);
      string(out, Base64.getEncoder().encodeToString(raw));
    } else if (datum instanceof GenericFixed fixed) {
      string(out, Base64.getEncoder().encodeToString(fixed.bytes()));
    } else {
      throw new IllegalArgumentException("no JSON form for " + datum.getClass().getName());
    }
  }

  /** A JSON string literal (null as null). */
  static void string(StringBuilder out, String text) {
    if (text == null) {
      out.append("null");
      return;
    }
    out.append('"');
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      switch (c) {
        case '"' -> out.append("\\\"");
        case '\\' -> out.append("\\\\");
        case '\n' -> out.append("\\n");
        case '\r' -> out.append("\\r");
        case '\t' -> out.append("\\t");
        default -> {
          if (c < 0x20 || c == '\u2028' || c == '\u2029') {
            out.append(String.format("\\u%04x", (int) c));
          } else {
            out.append(c);
          }
        }
      }
    }
    out.append('"');
  }

  static String hex(byte[] bytes, int limit) {
    StringBuilder text = new StringBuilder();
    for (int i = 0; i < Math.min(bytes.length, limit); i++) {
      text.append(String.format("%02x", bytes[i]));
    }
    return text.toString();
  }
}
