"""Local Kafka broker: cold start with the jars cached, and its memory.

Starts a fresh broker (new data dir, storage formatted) N times and a restart of an existing one,
and prints the median seconds to "admin client answers" and the JVM's resident memory after
start and after creating the pipeline's topics. Baseline in the same run: the time a bare
`java -version` takes, so figures from a busy machine can be read as ratios.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from contactsync.kafka.local_broker import LocalBroker, ensure_jars
from contactsync.kafka.topics import ensure_topics_at
from contactsync.settings import Settings

RUNS = 3


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    settings = Settings()
    ensure_jars(settings.kafka_version, settings.cache_dir)
    java = []
    for _ in range(RUNS):
        t = time.perf_counter()
        subprocess.run(["java", "-version"], capture_output=True, check=True)
        java.append(time.perf_counter() - t)
    cold, restart, rss_start, rss_topics = [], [], [], []
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory() as tmp:
            broker = LocalBroker(Path(tmp), version=settings.kafka_version,
                                 cache_dir=settings.cache_dir)
            t = time.perf_counter()
            bootstrap = broker.up()
            cold.append(time.perf_counter() - t)
            pid = broker.status().pid or 0
            rss_start.append(_rss_mb(pid))
            ensure_topics_at(bootstrap, settings)
            rss_topics.append(_rss_mb(pid))
            broker.down()
            t = time.perf_counter()
            broker.up()
            restart.append(time.perf_counter() - t)
            broker.down()
    med = statistics.median
    print(f"broker_startup (Kafka {settings.kafka_version}, {RUNS} runs, medians)")
    print(f"  java -version baseline     {med(java):6.2f} s")
    ratio = med(cold) / med(java)
    print(f"  cold start (jars cached)   {med(cold):6.2f} s   = {ratio:.0f}x baseline")
    print(f"  restart (formatted)        {med(restart):6.2f} s")
    print(f"  RSS after start            {med(rss_start):6.0f} MB")
    print(f"  RSS after 6 topics x 12    {med(rss_topics):6.0f} MB")
