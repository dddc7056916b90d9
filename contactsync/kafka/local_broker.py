"""A real, single-node Apache Kafka 4.x broker (KRaft) run from Maven Central jars, without Docker.

`contactsync kafka up|status|down` and the test fixtures use it (Kafka's KRaft quickstart, from
Maven Central jars):
1. resolve `kafka_2.13` and a log4j2 runtime with Maven into a cache shared by every checkout
   (`~/.cache/contactsync/kafka-<version>/libs`); Kafka's POM leaves logging out, and without a
   binding the broker would fail silently, so log4j-slf4j-impl + log4j-core are added;
2. write server.properties for 127.0.0.1 on free ports (kept in `broker.json`, so a restart
   comes back on the same address and clients reconnect), format storage once;
3. start the JVM in its own session, wait for "Kafka Server started" and an admin client answer.

With a `BrokerSecurity`, clients get a SASL_SSL listener instead (TLS from a PEM keystore,
SCRAM users created when the storage is formatted), as a secured production cluster has; the
broker talks to itself on a PLAINTEXT listener of its own that clients are never told about.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from contactsync.kafka.errors import BrokerError

if TYPE_CHECKING:
    from contactsync.settings import Settings

LOG4J_VERSION = "2.24.3"
READY_LINE = "Kafka Server started"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.contactsync</groupId><artifactId>kafka-broker-libs</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.req.name = kafka.request.logger
logger.req.level = WARN
"""


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        hint = "Java 17 or newer (apt-get install openjdk-17-jre-headless)"
        if name == "mvn":
            hint = "Apache Maven (apt-get install maven)"
        raise BrokerError(
            f"`{name}` was not found: install {hint} to run the local Kafka broker, "
            "or set KAFKA_BOOTSTRAP_SERVERS to an existing broker."
        )
    return path


Progress = Callable[[str], None]
PROGRESS_EVERY_S = 5.0  # a first `kafka up` says how the fetch goes at least this often
_DOWNLOADED = re.compile(r"^Downloaded from \S+: \S+ \((\d+(?:\.\d+)?) (B|kB|MB|GB) at")
_UNITS = {"B": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3}


def ensure_jars(version: str, cache_dir: Path, progress: Progress | None = None) -> Path:
    """Return the folder of broker jars for `version`, fetching it with Maven the first time
    (`progress` hears what happens meanwhile: the fetch takes a minute or more)."""
    say = progress or (lambda _message: None)
    home = cache_dir / f"kafka-{version}"
    libs = home / "libs"
    done = home / ".complete"
    if done.exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    # One fetch at a time, across processes (parallel test sessions, CI and a developer).
    with open(home / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process that fetches the Kafka {version} broker...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return libs
        mvn = _require_tool("mvn")
        _require_tool("java")
        (home / "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
        shutil.rmtree(libs, ignore_errors=True)
        say(f"fetching the Kafka {version} broker with Maven into {home} "
            "(first time only; about 100 MB)...")
        returncode, tail = _run_maven(
            [mvn, "-B", "-f", str(home / "pom.xml"),
             "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies",
             f"-DoutputDirectory={libs}", "-DincludeScope=runtime"], say)
        jars = list(libs.glob("*.jar"))
        if returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"Maven could not fetch Kafka {version} jars:\n{tail}")
        done.write_text(version)
        say(f"fetched the Kafka {version} broker: {len(jars)} jars in {libs}")
    return libs


def _run_maven(command: list[str], say: Progress) -> tuple[int, str]:
    """Run Maven, telling `say` every few seconds how many files (and bytes) it downloaded;
    (exit code, the last lines of its output)."""
    fetched = [0, 0]  # files, bytes
    finished = threading.Event()

    def report() -> None:
        while not finished.wait(PROGRESS_EVERY_S):
            files, size = fetched
            say(f"  ... still fetching: {files} files downloaded ({size / 1e6:.1f} MB) so far")

    reporter = threading.Thread(target=report, name="maven-progress", daemon=True)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)
    reporter.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            match = _DOWNLOADED.match(line.strip())
            if match:
                fetched[0] += 1
                fetched[1] += int(float(match.group(1)) * _UNITS[match.group(2)])
        returncode = proc.wait()
    finally:
        finished.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return returncode, "".join(tail)[-2000:]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_id() -> str:
    # Kafka's Uuid: 22 URL-safe base64 characters; one starting with "-" would read as an option.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


@dataclass(frozen=True)
class BrokerSecurity:
    """A SASL_SSL client listener. `keystore`: one PEM file holding the broker's PKCS#8 private
    key (unencrypted) and its certificate chain (Kafka's ssl.keystore.type=PEM, KIP-651);
    `users`: SCRAM user names and passwords, created at format time (KRaft has no ZooKeeper to
    add them to later), so they exist only in a broker whose data directory starts empty.
    `unsecured_oauth`: OAUTHBEARER too, with Kafka's default validator of unsigned tokens (any
    well-formed, unexpired JWT with `alg: none`): for tests of the token path only."""

    keystore: Path
    users: Mapping[str, str] = field(default_factory=dict)
    mechanism: str = "SCRAM-SHA-512"
    unsecured_oauth: bool = False

    def properties(self, port: int, internal: int, controller: int) -> str:
        mechanisms = [self.mechanism, *(["OAUTHBEARER"] if self.unsecured_oauth else [])]
        jaas = {self.mechanism: "org.apache.kafka.common.security.scram.ScramLoginModule"}
        if self.unsecured_oauth:
            jaas["OAUTHBEARER"] = (
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule")
        logins = "".join(f"listener.name.sasl_ssl.{m.lower()}.sasl.jaas.config={module} "
                         "required;\n" for m, module in jaas.items())
        return f"""listeners=SASL_SSL://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal},\
CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_SSL://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal}
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms={",".join(mechanisms)}
{logins}ssl.keystore.type=PEM
ssl.keystore.location={self.keystore}
"""

    def format_args(self) -> list[str]:
        args: list[str] = []
        for name, password in self.users.items():
            args += ["--add-scram", f"{self.mechanism}=[name={name},password={password}]"]
        return args


@dataclass
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str | None
    data_dir: Path


class LocalBroker:
    """One broker instance, all its files under `data_dir`."""

    def __init__(
        self, data_dir: Path, *, version: str, cache_dir: Path, heap_mb: int = 512,
        security: BrokerSecurity | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.version = version
        self.cache_dir = cache_dir
        self.heap_mb = heap_mb
        self.security = security

    @classmethod
    def for_settings(cls, settings: Settings) -> LocalBroker:
        """The broker whose files live in CONTACTSYNC_KAFKA_DATA_DIR (the sandbox, `kafka up`)."""
        return cls(settings.kafka_data_dir, version=settings.kafka_version,
                   cache_dir=settings.cache_dir)

    # --- files -------------------------------------------------------------------------------
    @property
    def _meta_file(self) -> Path:
        return self.data_dir / "broker.json"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "stdout.log"

    def _read_meta(self) -> dict[str, int | str]:
        if self._meta_file.exists():
            data: dict[str, int | str] = json.loads(self._meta_file.read_text())
            return data
        return {}

    def _pid(self) -> int | None:
        try:
            pid = int(self._pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    @property
    def bootstrap(self) -> str | None:
        port = self._read_meta().get("port")
        return f"127.0.0.1:{port}" if port else None

    # --- lifecycle ---------------------------------------------------------------------------
    def status(self) -> BrokerStatus:
        pid = self._pid()
        return BrokerStatus(pid is not None, pid, self.bootstrap if pid else None, self.data_dir)

    def up(self, timeout: float = 90.0, progress: Progress | None = None) -> str:
        """Start the broker (or find it running) and return its bootstrap address; `progress`
        hears about a first fetch of the jars."""
        running = self._pid()
        if running is not None and self.bootstrap:
            wait_until_ready(self.bootstrap, timeout=timeout)
            return self.bootstrap
        libs = ensure_jars(self.version, self.cache_dir, progress)
        java = _require_tool("java")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        meta = self._read_meta()
        ports: dict[str, int] = {}
        for name in ("port", "controller_port", "internal_port"):
            # Keep the address across restarts when we can, so clients reconnect by themselves.
            chosen = int(meta.get(name, 0))
            while not chosen or chosen in ports.values() or not _port_free(chosen):
                chosen = free_port()
            ports[name] = chosen
        port, controller, internal = ports.values()
        cluster_id = str(meta.get("cluster_id") or _cluster_id())
        self._meta_file.write_text(
            json.dumps({**ports, "cluster_id": cluster_id, "version": self.version})
        )
        props = self.data_dir / "server.properties"
        props.write_text(self._server_properties(port, controller, internal))
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2)
        jvm_base = [
            java, f"-Dlog4j2.configurationFile=file:{log4j}",
            f"-Dkafka.logs.dir={self.data_dir / 'logs'}", "-Djava.awt.headless=true",
            f"-Djava.io.tmpdir={self.data_dir}", "-cp", f"{libs}/*",
        ]
        if not (self.data_dir / "kraft" / "meta.properties").exists():
            fmt = subprocess.run(
                [*jvm_base, "kafka.tools.StorageTool", "format",
                 "-t", cluster_id, "-c", str(props),
                 *(self.security.format_args() if self.security else [])],
                capture_output=True, text=True, check=False,
            )
            if fmt.returncode != 0:
                raise BrokerError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        log = open(self.log_file, "a")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen(
            [jvm_base[0], f"-Xms{self.heap_mb // 2}m", f"-Xmx{self.heap_mb}m",
             "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExplicitGCInvokesConcurrent",
             *jvm_base[1:], "kafka.Kafka", str(props)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI that started it; `down` stops it
        )
        log.close()
        self._pid_file.write_text(str(proc.pid))
        bootstrap = f"127.0.0.1:{port}"
        try:
            self._wait_started(proc, timeout, log_start)
            # A secured broker answers a plain admin client on its own listener only.
            wait_until_ready(f"127.0.0.1:{internal}" if self.security else bootstrap,
                             timeout=timeout)
        except BaseException:
            self.down()
            raise
        return bootstrap

    def _wait_started(self, proc: subprocess.Popen[bytes], timeout: float, offset: int) -> None:
        """Wait for this start's ready line (the log keeps earlier runs' lines before `offset`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(
                    f"the Kafka broker exited with code {proc.returncode}:\n{self._log_tail()}"
                )
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            if READY_LINE.encode() in chunk:
                return
            offset += max(0, len(chunk) - len(READY_LINE))
            time.sleep(0.2)
        raise BrokerError(
            f"the Kafka broker did not start within {timeout:.0f} s:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the broker; returns whether one was running. Leaves no process behind."""
        pid = self._pid()
        if pid is None:
            self._pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)  # the JVM's shutdown hook closes logs cleanly
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self._pid_file.unlink(missing_ok=True)
        return True

    def _server_properties(self, port: int, controller: int, internal: int) -> str:
        listeners = (self.security.properties(port, internal, controller) if self.security
                     else f"""listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
""")
        # Single-node settings: every internal topic at replication 1 (the defaults of 3 make
        # consumer groups fail on one node), small internal topics for a fast first join.
        return f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
controller.listener.names=CONTROLLER
{listeners}log.dirs={self.data_dir / 'kraft'}
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=16777216
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
"""


def wait_until_ready(bootstrap: str, timeout: float = 60.0) -> None:
    """Block until an admin client answers on `bootstrap` (an open port alone is not enough)."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap, request_timeout_ms=5000, client_id="cs-ready",
                reconnect_backoff_ms=100, reconnect_backoff_max_ms=500,
            )
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except Exception as exc:  # not ready yet: connection refused, no metadata, ...
            last = exc
            time.sleep(0.3)
    raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout:.0f} s: {last}")
