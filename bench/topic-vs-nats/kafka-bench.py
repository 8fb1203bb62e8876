#!/usr/bin/env python3
"""Produce and consume through a Starling node's Kafka port with confluent-kafka (librdkafka),
the way rdkafka_performance does: one producer (acks=all, batching in librdkafka), then one
consumer reading every partition from the beginning. Prints lines in `starling bench topic`'s
shape ("produce: N msgs ... = R msgs/s") so the caller can compare them."""

import argparse
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", default="kafka-bench")
    ap.add_argument("--messages", type=int, default=300000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--window", type=int, default=256, help="messages in flight (librdkafka queue)")
    a = ap.parse_args()

    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    admin.create_topics([NewTopic(a.topic, a.partitions, 3)])[a.topic].result(30)
    time.sleep(2)  # every partition led

    payload = b"x" * a.size
    prod = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "linger.ms": 2,
                     "batch.num.messages": max(1, a.window // a.partitions),
                     "queue.buffering.max.messages": max(a.window * 4, 100000),
                     "enable.idempotence": False})
    delivered = [0]
    failed = [0]

    def cb(err, _msg):
        if err is None:
            delivered[0] += 1
        else:
            failed[0] += 1

    start = time.time()
    for i in range(a.messages):
        while True:
            try:
                prod.produce(a.topic, value=payload, partition=i % a.partitions, on_delivery=cb)
                break
            except BufferError:
                prod.poll(0.001)
        if i % 1000 == 0:
            prod.poll(0)
    prod.flush(120)
    secs = time.time() - start
    rate = delivered[0] / secs
    print(f"produce: {delivered[0]} msgs in {secs:.2f} s = {rate:.0f} msgs/s, "
          f"{rate * a.size / 1e6:.1f} MB/s ({failed[0]} failed)")

    cons = Consumer({"bootstrap.servers": a.bootstrap, "group.id": "kafka-bench",
                     "enable.auto.commit": False, "fetch.max.bytes": 8 << 20,
                     "max.partition.fetch.bytes": 4 << 20})
    cons.assign([TopicPartition(a.topic, p, 0) for p in range(a.partitions)])
    got = 0
    start = time.time()
    deadline = start + 120
    while got < delivered[0] and time.time() < deadline:
        # Never ask for more than is left: librdkafka waits out the timeout for a batch it
        # cannot fill, which added up to a second to the measured time.
        for m in cons.consume(num_messages=min(10000, delivered[0] - got), timeout=1.0):
            if not m.error():
                got += 1
    secs = time.time() - start
    cons.close()
    rate = got / secs
    print(f"consume: {got} msgs in {secs:.2f} s = {rate:.0f} msgs/s, {rate * a.size / 1e6:.1f} MB/s")
    if got < delivered[0]:
        sys.exit(f"read {got} of {delivered[0]}")


if __name__ == "__main__":
    main()
