"""The README quickstart, runnable: `make run` in one terminal, then `python docs/quickstart.py`."""

from tidelog.client import Admin, Consumer, Producer, TopicPartition

BOOTSTRAP = "127.0.0.1:9091,127.0.0.1:9092,127.0.0.1:9093"

with Admin(BOOTSTRAP) as admin:
    if "orders" not in admin.list_topics():
        admin.create_topic("orders", partitions=3, replication_factor=3)

with Producer(BOOTSTRAP) as producer:  # acks="all", idempotent, lz4 batches
    futures = [producer.send("orders", f"order {i}".encode(), key=f"customer-{i % 5}")
               for i in range(100)]
    producer.flush()
    first = futures[0].result()  # RecordMetadata(topic, partition, offset, timestamp)

with Consumer(BOOTSTRAP, auto_offset_reset="earliest") as consumer:
    tp = TopicPartition("orders", first.partition)
    consumer.assign([tp])
    consumer.seek(tp, first.offset)  # replay from an offset (or offsets_for_times for a time)
    records = consumer.poll(timeout_s=2.0)
    print(f"replayed {len(records)} records of partition {tp.partition} from offset {first.offset}")
