#!/usr/bin/env python3
"""Kafka clients, unchanged, against three local starlingd processes with --kafka.

Run by scripts/test-kafka (which installs confluent-kafka and kafka-python from PyPI into a
virtualenv and builds the binaries). Each scenario prints one line of figures; any failed check
exits non-zero with the reason and the nodes' log tails.

  keyed     kafka-python's producer (Kafka's murmur2 partitioner) and `starling topic produce
            --key` put every key in the partition Kafka's default partitioner picks.
  cross     records produced with `starling topic produce` are read by a Kafka consumer, and
            records a Kafka producer wrote are read by `starling topic consume`.
  group     two confluent-kafka consumers in one group, committing after each record; one
            leaves midway (a rebalance gives the other its partitions): every record is
            committed exactly once, in offset order per partition.
  failover  an idempotent confluent-kafka producer (acks=all) streams while the leader of a
            partition is killed with -9 and later restarted; a group consumer reads along: every
            acknowledged record is committed exactly once, in offset order per partition, and no
            offset holds two records. A commit answered with an error may still have landed
            (the coordinator died between its write and its answer): the consumer asks the
            group's committed offset before it reads the record again.
  tls       `starling dev` with certificates: both clients produce and consume over TLS with the
            client certificate; a client without one writes nothing.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2

PATIENCE = 60.0


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


class Cluster:
    def __init__(self, bindir, base):
        self.bindir = bindir
        self.base = base
        self.dir = tempfile.mkdtemp(prefix="starling-kafka-")
        self.procs = [None, None, None]

    def quic(self, i):
        return f"127.0.0.1:{self.base + i}"

    def http(self, i):
        return f"127.0.0.1:{self.base + 100 + i}"

    def kafka(self, i):
        return f"127.0.0.1:{self.base + 200 + i}"

    def bootstrap(self):
        return ",".join(self.kafka(i) for i in range(3))

    def start(self, i):
        log = open(os.path.join(self.dir, f"n{i}.log"), "ab")
        self.procs[i] = subprocess.Popen(
            [
                os.path.join(self.bindir, "starlingd"),
                "--data-dir", os.path.join(self.dir, f"n{i}"),
                "--listen", self.quic(i),
                "--http", self.http(i),
                "--kafka", self.kafka(i),
                "--seeds", self.quic(0),
                "--meta-voters", ",".join(self.quic(j) for j in range(3)),
                "--zone", f"z{i}",
                "--insecure",
            ],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )

    def kill9(self, i):
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def stop(self):
        for i in range(3):
            self.kill9(i)

    def status(self, i):
        try:
            with urllib.request.urlopen(f"http://{self.http(i)}/status", timeout=2) as r:
                return json.load(r)
        except Exception:
            return None

    def wait_ready(self, nodes=(0, 1, 2)):
        deadline = time.time() + PATIENCE
        while time.time() < deadline:
            ok = 0
            for i in nodes:
                s = self.status(i)
                if (s and s["converged"] and s["ring"]["nodes"] == 3 and s["ring"]["status"] == "normal"
                        and all(m["state"] == "alive" for m in s["members"])
                        and sum(1 for m in s["members"] if m.get("kafka")) == 3
                        and not (s.get("kv") or {}).get("recovering")):
                    ok += 1
            if ok == len(nodes):
                return
            time.sleep(0.2)
        raise Fail("the cluster did not converge with three Kafka listeners")

    def starling(self, *args, stdin=None):
        cmd = [os.path.join(self.bindir, "starling"), "--insecure", "--node", self.quic(0), *args]
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise Fail(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def create(self, name, partitions, min_insync=2):
        deadline = time.time() + PATIENCE
        while True:
            try:
                self.starling("topic", "create", name, "--partitions", str(partitions),
                              "--replication", "3", "--min-insync", str(min_insync))
                break
            except Fail as e:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        # Every partition led.
        while True:
            d = json.loads(self.starling("topic", "describe", name, "--json"))
            parts = d.get("partition_info") or d.get("partitions_info") or []
            if parts and all(p.get("leader") for p in parts):
                return d
            if time.time() > deadline:
                raise Fail(f"topic {name}: not every partition has a leader: {d}")
            time.sleep(0.2)

    def logs(self):
        out = []
        for i in range(3):
            path = os.path.join(self.dir, f"n{i}.log")
            try:
                lines = open(path, errors="replace").read().splitlines()[-15:]
            except OSError:
                lines = []
            out.append(f"--- node {i} ---\n" + "\n".join(lines))
        return "\n".join(out)


def kafka_partition(key, partitions):
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def scenario_keyed(c):
    c.create("keyed", 4)
    p = KafkaProducer(bootstrap_servers=c.bootstrap(), acks="all", request_timeout_ms=20000)
    keys = [f"key-{i}".encode() for i in range(200)]
    futures = [(k, p.send("keyed", key=k, value=b"kafka-" + k)) for k in keys]
    p.flush()
    for k, f in futures:
        md = f.get(timeout=30)
        check(md.partition == kafka_partition(k, 4),
              f"kafka-python put {k!r} in partition {md.partition}, murmur2 says {kafka_partition(k, 4)}")
    for k in keys[:20]:
        c.starling("topic", "produce", "keyed", "--key", k.decode(), "native-" + k.decode())
    consumer = KafkaConsumer(bootstrap_servers=c.bootstrap(), enable_auto_commit=False,
                             consumer_timeout_ms=5000)
    tps = [TopicPartition("keyed", i) for i in range(4)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    native = 0
    seen = 0
    for m in consumer:
        seen += 1
        check(m.partition == kafka_partition(m.key, 4),
              f"record {m.value!r} with key {m.key!r} is in partition {m.partition}")
        if m.value.startswith(b"native-"):
            native += 1
        if seen == 220:
            break
    consumer.close()
    check(native == 20, f"{native} of 20 natively produced keyed records read back")
    print(f"keyed: 200 kafka-python and 20 native keyed records, each in murmur2(key) mod 4")


def scenario_cross(c):
    c.create("cross", 2)
    c.starling("topic", "produce", "cross", "n1", "n2", "n3")
    got = set()
    cons = Consumer({"bootstrap.servers": c.bootstrap(), "group.id": "cross-reader",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
    cons.subscribe(["cross"])
    deadline = time.time() + PATIENCE
    while len(got) < 3 and time.time() < deadline:
        m = cons.poll(0.5)
        if m is not None and not m.error():
            got.add(m.value())
    cons.close()
    check(got == {b"n1", b"n2", b"n3"}, f"a Kafka consumer read {got} of n1..n3")
    prod = Producer({"bootstrap.servers": c.bootstrap(), "enable.idempotence": True})
    for v in ("c1", "c2", "c3"):
        prod.produce("cross", value=v.encode())
    check(prod.flush(30) == 0, "confluent-kafka could not deliver c1..c3")
    # Batches compressed by the producer are stored and served as they are; consumers
    # (confluent-kafka, and `starling topic consume`) decompress them.
    codecs = ("gzip", "snappy", "lz4", "zstd")
    for codec in codecs:
        cp = Producer({"bootstrap.servers": c.bootstrap(), "compression.type": codec, "linger.ms": 20})
        for i in range(50):
            cp.produce("cross", value=f"{codec}-{i}".encode() * 20)
        check(cp.flush(30) == 0, f"confluent-kafka could not deliver {codec} batches")
    kp = KafkaProducer(bootstrap_servers=c.bootstrap(), compression_type="gzip", acks="all")
    for i in range(50):
        kp.send("cross", value=f"kp-gzip-{i}".encode())
    kp.flush()
    kp.close()
    wanted = {"c1", "c2", "c3"} | {f"kp-gzip-{i}" for i in range(50)} | {
        f"{codec}-{i}" * 20 for codec in codecs for i in range(50)}
    out = c.starling("topic", "consume", "cross", "--from-beginning", "--json")
    values = {json.loads(line).get("value") for line in out.splitlines() if line.strip()}
    check(wanted <= values, f"starling topic consume missed {sorted(wanted - values)[:5]}")
    cons = Consumer({"bootstrap.servers": c.bootstrap(), "group.id": "cross-reader-2",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
    cons.subscribe(["cross"])
    seen = set()
    deadline = time.time() + PATIENCE
    while not wanted <= seen and time.time() < deadline:
        m = cons.poll(0.5)
        if m is not None and not m.error():
            seen.add(m.value().decode())
    cons.close()
    check(wanted <= seen, f"confluent-kafka missed {sorted(wanted - seen)[:5]}")
    print("cross: starling topic produce -> confluent-kafka consumer, confluent-kafka producer -> "
          "starling topic consume; gzip, snappy, lz4 and zstd batches stored as sent and read by both")


class Ledger:
    """Records committed (partition, offset, value) in commit order, across consumers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.commits = []
        self.retried = 0
        self.events = []  # (time, who, partition, offset, what): commits that failed, seeks

    def note(self, who, m, what):
        with self.lock:
            self.events.append((time.time(), who, m.partition(), m.offset(), what))

    def add(self, who, m):
        with self.lock:
            self.commits.append((who, m.partition(), m.offset(), m.value()))

    def check(self, expected, what):
        by_value = {}
        last = {}
        for who, p, off, v in self.commits:
            check(v not in by_value, f"{what}: {v!r} committed twice ({by_value.get(v)} and {(who, p, off)})")
            by_value[v] = (who, p, off)
            check(off > last.get(p, -1),
                  f"{what}: partition {p} committed offset {off} after {last.get(p)} (out of order)")
            last[p] = off
        missing = [v for v in expected if v not in by_value]
        check(not missing, f"{what}: {len(missing)} acknowledged records never committed, e.g. {missing[:3]}")
        return by_value


def commit_or_drop(cons, m, note=lambda what: None):
    """Commits m; True once committed. False if the commit failed for good (the group moved on,
    or the coordinator stayed away): the record does not count as consumed, and the consumer
    goes back to it so that whoever owns its partition reads it again (this consumer, if the
    partition is still its own; else the new owner, from the group's committed offset)."""
    for _ in range(50):
        try:
            cons.commit(message=m, asynchronous=False)
            return True
        except KafkaException as e:
            err = e.args[0]
            note(f"commit: {err.name()}")
            if err.code() in (KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
                              KafkaError.UNKNOWN_MEMBER_ID, KafkaError._NO_OFFSET,
                              KafkaError._STATE, KafkaError._ASSIGNMENT_LOST):
                break
            time.sleep(0.1)
    # An error does not say the commit was lost: a coordinator killed after its write and before
    # its answer leaves the commit in doubt (Kafka's too). The group's committed offset says.
    committed = committed_offset(cons, m)
    if committed is not None and committed > m.offset():
        note(f"commit: landed after all (the group's committed offset is {committed})")
        return True
    try:
        cons.seek(CTopicPartition(m.topic(), m.partition(), m.offset()))
        note("seek back")
    except KafkaException as e:
        # No longer assigned here: its new owner starts from the committed offset.
        note(f"seek back: {e.args[0].name()}")
    return False


def committed_offset(cons, m):
    """The group's committed offset for m's partition, asked of the coordinator (None if it
    would not say within about 10 s)."""
    for _ in range(10):
        try:
            [tp] = cons.committed([CTopicPartition(m.topic(), m.partition())], timeout=5)
            if tp.error is None:
                return tp.offset
        except KafkaException:
            pass
        time.sleep(0.5)
    return None


def group_consumer(c, group, topic, who, ledger, stop, extra=None):
    conf = {"bootstrap.servers": c.bootstrap(), "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500, "client.id": who}
    conf.update(extra or {})
    cons = Consumer(conf)
    cons.subscribe([topic])
    mine = 0
    while not stop(mine):
        m = cons.poll(0.2)
        if m is None or m.error():
            continue
        if commit_or_drop(cons, m, lambda what: ledger.note(who, m, what)):
            ledger.add(who, m)
            mine += 1
        else:
            with ledger.lock:
                ledger.retried += 1
    cons.close()
    return mine


def scenario_group(c):
    n = 2000
    c.create("grp", 4)
    prod = Producer({"bootstrap.servers": c.bootstrap(), "enable.idempotence": True, "linger.ms": 5})
    for i in range(n):
        prod.produce("grp", key=str(i).encode(), value=f"m-{i}".encode())
        prod.poll(0)
    check(prod.flush(60) == 0, "not every record was delivered")
    ledger = Ledger()
    done = threading.Event()
    counts = {}

    def run(who, stop):
        counts[who] = group_consumer(c, "workers", "grp", who, ledger, stop)

    t1 = threading.Thread(target=run, args=("c1", lambda mine: mine >= 500))
    t2 = threading.Thread(target=run, args=("c2", lambda mine: len(ledger.commits) >= n or done.is_set()))
    t1.start()
    t2.start()
    t1.join(PATIENCE)
    deadline = time.time() + 2 * PATIENCE
    while len(ledger.commits) < n and time.time() < deadline:
        time.sleep(0.2)
    done.set()
    t2.join(PATIENCE)
    ledger.check([f"m-{i}".encode() for i in range(n)], "group")
    check(len(ledger.commits) == n, f"{len(ledger.commits)} commits for {n} records")
    check(counts.get("c1", 0) >= 500 and counts.get("c2", 0) > 0, f"per consumer {counts}")
    print(f"group: {n} records committed exactly once in offset order per partition; c1 {counts['c1']} then left, c2 {counts['c2']}")


def explain_missing(c, topic, acked, ledger):
    """For a failed run: where each acknowledged record that was never committed sits now (read
    back from its acknowledged offset), and what the consumer committed around it."""
    with ledger.lock:
        have = {v for (_, _, _, v) in ledger.commits}
        commits = list(ledger.commits)
        events = list(ledger.events)
    missing = [v for v in acked if v not in have]
    for v in missing[:3]:
        p, off = acked[v]
        around = [(who, o, val) for (who, q, o, val) in commits if q == p and off - 3 <= o <= off + 3]
        print(f"  {v!r} acknowledged at {p}@{off}; committed near it: {around}", file=sys.stderr)
        for (t, who, q, o, what) in events:
            if q == p and off - 3 <= o <= off + 3:
                print(f"  {time.strftime('%H:%M:%S', time.gmtime(t))}.{int(t * 1000) % 1000:03d} {who} "
                      f"{p}@{o}: {what}", file=sys.stderr)
        cons = KafkaConsumer(bootstrap_servers=c.bootstrap(), consumer_timeout_ms=5000)
        tp = TopicPartition(topic, p)
        cons.assign([tp])
        cons.seek(tp, max(0, off - 2))
        stored = []
        for m in cons:
            stored.append((m.offset, m.value))
            if len(stored) >= 5:
                break
        cons.close()
        print(f"  partition {p} now holds, from {max(0, off - 2)}: {stored}", file=sys.stderr)


def scenario_failover(c):
    c.create("ha", 3)
    d = json.loads(c.starling("topic", "describe", "ha", "--json"))
    leader_id = d["partition_info"][0]["leader"]
    victim = next(i for i in range(3)
                  if next(m for m in c.status(i)["members"] if m["self"])["node_id"] == leader_id)
    acked = {}
    failed = []
    lock = threading.Lock()
    ack_times = []

    def on_delivery(err, msg):
        with lock:
            if err is None:
                v = msg.value()
                prev = acked.get(v)
                check(prev is None or prev == (msg.partition(), msg.offset()), f"{v!r} acknowledged twice")
                acked[v] = (msg.partition(), msg.offset())
                ack_times.append((time.time(), msg.partition()))
            else:
                failed.append((msg.value(), str(err)))

    prod = Producer({"bootstrap.servers": c.bootstrap(), "enable.idempotence": True, "acks": "all",
                     "linger.ms": 2, "message.timeout.ms": 60000})
    ledger = Ledger()
    stop_consumer = threading.Event()
    consumer = threading.Thread(target=group_consumer,
                                args=(c, "ha-readers", "ha", "r1", ledger, lambda _: stop_consumer.is_set()))
    consumer.start()
    sent = 0
    start = time.time()
    killed_at = restarted_at = None
    while time.time() - start < 14:
        el = time.time() - start
        if killed_at is None and el > 4:
            c.kill9(victim)
            killed_at = time.time()
        if restarted_at is None and el > 9:
            c.start(victim)
            restarted_at = time.time()
        prod.produce("ha", key=str(sent).encode(), value=f"h-{sent}".encode(), on_delivery=on_delivery)
        sent += 1
        prod.poll(0)
        time.sleep(0.004)
    check(prod.flush(90) == 0, f"{len(prod)} records still in the producer's queue")
    expected = list(acked.keys())
    deadline = time.time() + 2 * PATIENCE
    while time.time() < deadline:
        with ledger.lock:
            have = {v for (_, _, _, v) in ledger.commits}
        if all(v in have for v in expected):
            break
        time.sleep(0.3)
    stop_consumer.set()
    consumer.join(PATIENCE)
    explain_missing(c, "ha", acked, ledger)
    by_value = ledger.check(expected, "failover")
    for v, (p, off) in acked.items():
        check(by_value[v][1:] == (p, off), f"{v!r} acknowledged at {p}@{off}, read at {by_value[v][1:]}")
    # Partition 0 (the killed leader's): its first acknowledgement after the kill, and its
    # longest pause between acknowledgements.
    p0 = sorted(t for t, p in ack_times if p == 0)
    after = [t for t in p0 if t > killed_at]
    check(after, "no record of partition 0 was acknowledged after its leader was killed")
    first_after = min(after) - killed_at
    gaps = [b - a for a, b in zip(p0, p0[1:])]
    print(f"failover: {sent} sent, {len(acked)} acknowledged, {len(failed)} failed; leader of ha/0 "
          f"(node {victim}) killed at 4 s, restarted at 9 s; its first acknowledgement after the kill "
          f"{first_after * 1000:.0f} ms later, its longest pause between acknowledgements "
          f"{max(gaps) * 1000:.0f} ms; every acknowledged record committed exactly once, in order "
          f"({ledger.retried} commits refused or unanswered and their records read again, "
          f"{sum(1 for e in ledger.events if 'landed' in e[4])} answered with an error that had landed)")
    c.wait_ready()


def scenario_tls(c):
    """`starling dev` with certificates: both clients over TLS with the client certificate."""
    base = c.base + 500
    d = tempfile.mkdtemp(prefix="starling-kafka-tls-")
    dev = subprocess.Popen(
        [os.path.join(c.bindir, "starling"), "dev", "--nodes", "3", "--dir", d, "--base-port", str(base),
         "--http-base-port", str(base + 100), "--kafka-base-port", str(base + 200)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        certs = os.path.join(d, "certs", "client")
        cli = [os.path.join(c.bindir, "starling"), "--node", f"127.0.0.1:{base}", "--certs", certs]
        deadline = time.time() + PATIENCE
        while subprocess.run(cli + ["topic", "create", "secure", "--partitions", "2"],
                             capture_output=True).returncode != 0:
            check(time.time() < deadline, "could not create a topic on the TLS dev cluster")
            time.sleep(0.5)
        tls = {"security.protocol": "ssl", "ssl.ca.location": os.path.join(certs, "ca.pem"),
               "ssl.certificate.location": os.path.join(certs, "node.pem"),
               "ssl.key.location": os.path.join(certs, "node.key")}
        boot = ",".join(f"127.0.0.1:{base + 200 + i}" for i in range(3))
        p = Producer({"bootstrap.servers": boot, "enable.idempotence": True, **tls})
        for i in range(20):
            p.produce("secure", key=b"k%d" % i, value=b"s%d" % i)
        check(p.flush(30) == 0, "confluent-kafka could not deliver over TLS")
        kp = KafkaProducer(bootstrap_servers=boot, security_protocol="SSL",
                           ssl_cafile=tls["ssl.ca.location"], ssl_certfile=tls["ssl.certificate.location"],
                           ssl_keyfile=tls["ssl.key.location"], acks="all")
        kp.send("secure", key=b"kp", value=b"s-kp").get(timeout=30)
        kp.close()
        cons = Consumer({"bootstrap.servers": boot, "group.id": "secure-readers",
                         "auto.offset.reset": "earliest", **tls})
        cons.subscribe(["secure"])
        got = set()
        while len(got) < 21 and time.time() < deadline:
            m = cons.poll(0.5)
            if m is not None and not m.error():
                got.add(m.value())
        cons.close()
        check(len(got) == 21, f"read {len(got)} of 21 records over TLS")
        # Without a client certificate the handshake is refused.
        nocert = Producer({"bootstrap.servers": boot, "security.protocol": "ssl",
                           "ssl.ca.location": tls["ssl.ca.location"], "message.timeout.ms": 3000})
        nocert.produce("secure", value=b"intruder")
        check(nocert.flush(10) == 0, "the certificate-less producer's record neither failed nor was written")
        out = subprocess.run(cli + ["topic", "consume", "secure", "--from-beginning", "--json"],
                             capture_output=True, text=True).stdout
        check("intruder" not in out, "a client without a certificate wrote a record")
        print("tls: confluent-kafka and kafka-python over TLS with the client certificate "
              "(`starling dev`); a client without one is refused")
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(30)
        except subprocess.TimeoutExpired:
            dev.kill()
        shutil.rmtree(d, ignore_errors=True)


SCENARIOS = {"keyed": scenario_keyed, "cross": scenario_cross, "group": scenario_group,
             "failover": scenario_failover, "tls": scenario_tls}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="directory with starlingd and starling")
    ap.add_argument("--base-port", type=int, default=0)
    ap.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    a = ap.parse_args()
    base = a.base_port or 10000 + (os.getpid() % 2000) * 10
    c = Cluster(a.bin, base)
    try:
        for i in range(3):
            c.start(i)
        c.wait_ready()
        for s in a.scenarios:
            t = time.time()
            SCENARIOS[s](c)
            print(f"  ({s}: {time.time() - t:.1f} s)")
    except (Fail, KafkaException, AssertionError) as e:
        print(f"FAILED: {e}\n{c.logs()}", file=sys.stderr)
        sys.exit(1)
    finally:
        c.stop()
        shutil.rmtree(c.dir, ignore_errors=True)
    print("kafka clients: all scenarios passed")


if __name__ == "__main__":
    main()
