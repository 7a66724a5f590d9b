"""The exactly-once core: one stream's records and its position in one Kafka transaction.

    pipeline.py       the loop: batches from a source -> one open transaction -> commit,
                      abort and resume from the last committed position, fencing
    contract.py       what the loop works with: producer, positions, side topics, stats
    commit_policy.py  when the open transaction commits (size, latency, heartbeat)
    positions.py      every stream's committed position, in memory, followed from the
                      compacted state topic
    repeats.py        dropping upstream repeats, transaction-aware

The transactional producer itself (its explicit state machine, librdkafka's errors
translated) is `bridge.kafka.producer`. Nothing here knows an upstream: a source is "give
me batches from this position" (`bridge.records.Source`).
"""
