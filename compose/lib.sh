# shellcheck shell=bash
# compose/lib.sh: the functions compose/up, compose/down, compose/test and .ci/run share.
# Source it from a bash script running under `set -euo pipefail`; it has no effect of its own.
#
# Map:
#   logging and timing ... log, warn, die, run_phase, elapsed_since
#   installing ........... install_build_tools, install_postgres, install_kafka,
#                          install_keycloak, install_rust_tools, ensure_nextest, install_python_venv,
#                          install_smtp_sink
#   waiting .............. port_in_use, wait_for_port, wait_for_http
#   processes ............ start_daemon, pid_alive, stop_pidfile
#   PostgreSQL ........... start_postgres, stop_postgres, postgres_running, pg_admin_psql,
#                          ensure_pg_role_db
#   Apache Kafka ......... kafka_home, kafka_java, start_kafka, wait_for_kafka, kafka_answers,
#                          kafka_brokers, stop_kafka (the node's settings: compose/kafka/broker;
#                          the three-broker cluster: compose/kafka/cluster)
#   Keycloak ............. keycloak_home, keycloak_java, install_keycloak, keycloak_seed,
#                          start_keycloak, stop_keycloak, keycloak_token (realm:
#                          compose/keycloak/realm.json)
#   SMTP sink ............ smtp_sink_python, start_smtp_sink, stop_smtp_sink
#   services ............. cargo_target_dir, service_binary, stack_env, stack_prepare,
#                          start_service, stack_daemon, stop_service, wait_for_ready (each service's
#                          settings: fm-stack, crate stack/)
#
# Conventions: pid files go to "$FM_RUN_DIR", logs to "$FM_LOG_DIR" (the caller sets both).
# Every server listens on 127.0.0.1 only. Nothing here asks a question: no stdin is needed.

if [[ -n "${FM_LIB_SOURCED:-}" ]]; then
    return 0
fi
FM_LIB_SOURCED=1

FM_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
FM_COMPOSE_DIR="$FM_REPO_ROOT/compose"

# The Apache Kafka release the local stack and the tests run (compose/kafka/pom.xml resolves it).
FM_KAFKA_VERSION=${FM_KAFKA_VERSION:-4.4.0}

# The Keycloak release of the local OpenID Connect provider (compose/keycloak/pom.xml).
FM_KEYCLOAK_VERSION=${FM_KEYCLOAK_VERSION:-26.7.3}

# ---------------------------------------------------------------------------------------------
# Logging and timing

log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "${FM_LOG_TAG:-compose}" "$*" >&2; }
warn() { log "warning: $*"; }
die() {
    log "error: $*"
    exit 1
}

# elapsed_since EPOCH_SECONDS: prints "1m07s".
elapsed_since() {
    local secs=$((SECONDS - $1))
    printf '%dm%02ds' $((secs / 60)) $((secs % 60))
}

# run_phase NAME CMD...: runs CMD with a start line and a duration line; returns CMD's status
# (the caller decides whether a failure stops it).
run_phase() {
    local name=$1 start=$SECONDS rc=0
    shift
    log "==> $name (started $(date -u +%Y-%m-%dT%H:%M:%SZ))"
    "$@" || rc=$?
    log "<== $name: $(elapsed_since "$start"), exit $rc"
    return "$rc"
}

# print_usage SCRIPT: prints the comment block at the top of SCRIPT (after the #! line).
print_usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"
}

# show_log_tail FILE [LINES]: the end of a log, indented, on stderr.
show_log_tail() {
    local file=$1 lines=${2:-40}
    if [[ -r "$file" ]]; then
        log "last $lines lines of $file:"
        tail -n "$lines" "$file" | sed 's/^/    /' >&2
    else
        log "(no log at $file)"
    fi
}

# ---------------------------------------------------------------------------------------------
# Installing what is missing

is_root() { [[ $EUID -eq 0 ]]; }

# as_root CMD...: runs CMD as root (directly, or through passwordless sudo).
as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        die "need root to run '$*' (no passwordless sudo); run it yourself, then retry"
    fi
}

apt_update_once() {
    if [[ -z "${FM_APT_UPDATED:-}" ]]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        FM_APT_UPDATED=1
    fi
}

# apt_install PKG...: installs Debian packages without questions.
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install these yourself: $*"
    apt_update_once
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@" >&2
}

# install_build_tools: a C toolchain (librdkafka, libsql and zstd are built from source by
# cargo), pkg-config, and curl (the readiness probes).
install_build_tools() {
    local missing=()
    command -v cc >/dev/null || missing+=(build-essential)
    command -v make >/dev/null || missing+=(make)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    command -v curl >/dev/null || missing+=(curl ca-certificates)
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
    fi
}

# pg_bin_dir: prints the directory holding initdb/pg_ctl/postgres/psql, preferring
# PostgreSQL 15; FM_PG_BIN overrides. Fails (status 1, no output) when none is installed.
pg_bin_dir() {
    local dir
    if [[ -n "${FM_PG_BIN:-}" ]]; then
        printf '%s\n' "$FM_PG_BIN"
        return 0
    fi
    for dir in /usr/lib/postgresql/15/bin $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV); do
        if [[ -x "$dir/pg_ctl" && -x "$dir/initdb" && -x "$dir/postgres" && -x "$dir/psql" ]]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    if command -v pg_ctl >/dev/null && command -v initdb >/dev/null && command -v psql >/dev/null; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return 0
    fi
    return 1
}

# install_postgres: installs PostgreSQL 15 from Debian unless binaries are already there.
# On a machine where we install postgresql-common ourselves, we first switch off Debian's
# automatic "main" cluster: it would start on 5432 and collide with the local stack.
install_postgres() {
    if PG_BIN=$(pg_bin_dir); then
        return 0
    fi
    log "PostgreSQL not found: installing it from Debian's packages"
    if ! dpkg -s postgresql-common >/dev/null 2>&1; then
        apt_install postgresql-common
        if [[ -f /etc/postgresql-common/createcluster.conf ]]; then
            as_root sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' \
                /etc/postgresql-common/createcluster.conf
        fi
    fi
    apt_install postgresql-15 || apt_install postgresql
    PG_BIN=$(pg_bin_dir) || die "PostgreSQL installed but initdb/pg_ctl/psql not found"
    log "PostgreSQL binaries: $PG_BIN"
}

# kafka_home: where install_kafka puts Apache Kafka FM_KAFKA_VERSION (FM_KAFKA_HOME overrides):
# outside the checkout, so that every clone and CI run on this machine shares one install.
kafka_home() {
    printf '%s\n' "${FM_KAFKA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/funeral-manager/kafka-$FM_KAFKA_VERSION}"
}

kafka_version() { printf '%s\n' "$FM_KAFKA_VERSION"; }

# new_kafka_cluster_id: a random KRaft cluster id (16 random bytes, URL-safe base64, no padding,
# as kafka-storage.sh random-uuid prints). One in 64 starts with '-', which kafka-storage's
# argument parser took for an option when given as a separate word (compose/kafka/broker passes
# it as --cluster-id=ID).
new_kafka_cluster_id() {
    head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'
    echo
}

# java_major JAVA: the major version of a java binary ("17"), or nothing.
java_major() {
    "$1" -version 2>&1 | sed -nE '1s/.*version "(1\.)?([0-9]+).*/\2/p'
}

# kafka_java: prints a java binary of version 17 or newer: FM_KAFKA_JAVA, then $JAVA_HOME/bin/java,
# then java on PATH. Fails when there is none.
kafka_java() {
    local java major
    for java in ${FM_KAFKA_JAVA:-} ${JAVA_HOME:+$JAVA_HOME/bin/java} java; do
        command -v "$java" >/dev/null || continue
        major=$(java_major "$java")
        if [[ -n "$major" ]] && ((major >= 17)); then
            command -v "$java"
            return 0
        fi
    done
    return 1
}

# install_kafka: Apache Kafka FM_KAFKA_VERSION from Maven Central into kafka_home, unless it is
# there already (for the same compose/kafka/pom.xml). Java 17 (Debian's openjdk-17-jre-headless)
# and Maven come from Debian's packages when missing. Maven resolves kafka_2.13 and its runtime
# dependencies into Maven's own cache (~/.m2) and copies the jars to <kafka home>/lib.
install_kafka() {
    local home pom="$FM_COMPOSE_DIR/kafka/pom.xml" stamp staging
    home=$(kafka_home)
    stamp="$FM_KAFKA_VERSION $(sha256sum "$pom" | cut -d' ' -f1)"
    if [[ -f "$home/lib/.installed" && "$(<"$home/lib/.installed")" == "$stamp" ]]; then
        kafka_java >/dev/null && return 0
    fi
    if ! kafka_java >/dev/null; then
        log "no Java 17 or newer found: installing openjdk-17-jre-headless from Debian's packages"
        apt_install openjdk-17-jre-headless
        kafka_java >/dev/null || die "openjdk-17-jre-headless installed, but no java 17 found"
    fi
    [[ -f "$home/lib/.installed" && "$(<"$home/lib/.installed")" == "$stamp" ]] && return 0
    command -v mvn >/dev/null || apt_install maven
    log "installing Apache Kafka $FM_KAFKA_VERSION from Maven Central into $home (once)"
    staging="$home/lib.partial"
    rm -rf "$staging"
    mkdir -p "$staging"
    # JAVA_HOME must be a JDK or JRE Maven accepts; the one kafka_java found is.
    JAVA_HOME=$(dirname "$(dirname "$(readlink -f "$(kafka_java)")")") \
        mvn --batch-mode --quiet --no-transfer-progress -Dstyle.color=never -f "$pom" \
        -Dkafka.version="$FM_KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$staging" \
        </dev/null >&2 || die "mvn could not resolve Apache Kafka $FM_KAFKA_VERSION (see above)"
    [[ -f "$staging/kafka_2.13-$FM_KAFKA_VERSION.jar" ]] ||
        die "mvn finished, but $staging has no kafka_2.13-$FM_KAFKA_VERSION.jar"
    printf '%s\n' "$stamp" >"$staging/.installed"
    rm -rf "$home/lib"
    mv "$staging" "$home/lib"
    log "Apache Kafka $FM_KAFKA_VERSION: $(find "$home/lib" -name '*.jar' | wc -l) jars in $home/lib"
}

# install_rust_tools: rustfmt and clippy (rustup components) when missing.
install_rust_tools() {
    command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
    local missing=()
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    if ((${#missing[@]})); then
        command -v rustup >/dev/null || die "missing ${missing[*]} and no rustup to add them"
        log "rustup component add ${missing[*]}"
        rustup component add "${missing[@]}" >&2
    fi
}

# ensure_nextest: succeeds when `cargo nextest` is usable, installing it from crates.io if it
# is missing (FM_INSTALL_NEXTEST=0 skips the install). Fails when it is still unavailable;
# callers then fall back to `cargo test`.
ensure_nextest() {
    if cargo nextest --version >/dev/null 2>&1; then
        return 0
    fi
    if [[ "${FM_INSTALL_NEXTEST:-1}" == 0 ]]; then
        return 1
    fi
    log "cargo-nextest not found: cargo install cargo-nextest --locked"
    if env -u CARGO_TARGET_DIR cargo install cargo-nextest --locked </dev/null >&2; then
        cargo nextest --version >/dev/null 2>&1
    else
        warn "installing cargo-nextest failed; falling back to cargo test"
        return 1
    fi
}

# install_python_venv DIR REQUIREMENT...: a Python virtual environment in DIR with the
# REQUIREMENTs (pip specifiers, from PyPI) installed; python3 and its venv module come from
# Debian's packages when missing. Leaves DIR alone when every requirement is already satisfied
# there, so that a second run spends no time and needs no network.
install_python_venv() {
    local dir=$1
    shift
    if [[ -x "$dir/bin/python" ]] && "$dir/bin/python" - "$@" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
for text in sys.argv[1:]:
    requirement = Requirement(text)
    if not requirement.specifier.contains(version(requirement.name), prereleases=True):
        sys.exit(1)
PY
        return 0
    fi
    if ! command -v python3 >/dev/null; then
        apt_install python3 python3-venv
    elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3-venv
    fi
    if [[ ! -x "$dir/bin/pip" ]]; then
        log "creating a Python virtual environment in $dir"
        rm -rf "$dir"
        mkdir -p "$(dirname "$dir")"
        python3 -m venv "$dir" >&2 || die "python3 -m venv $dir failed"
    fi
    log "pip install $* (into $dir)"
    "$dir/bin/pip" install --quiet --disable-pip-version-check packaging "$@" </dev/null >&2 ||
        die "pip install $* failed (see above)"
}

# smtp_sink_python: prints the first Python that imports aiosmtpd: FM_SMTP_SINK_PYTHON, then
# /usr/bin/python3 (where Debian's python3-aiosmtpd installs), then python3 on PATH (which may
# be a pyenv or venv interpreter that cannot see Debian's packages). Fails when none does.
smtp_sink_python() {
    local python
    for python in ${FM_SMTP_SINK_PYTHON:-} /usr/bin/python3 python3; do
        if command -v "$python" >/dev/null && "$python" -c 'import aiosmtpd' 2>/dev/null; then
            printf '%s\n' "$python"
            return 0
        fi
    done
    return 1
}

# install_smtp_sink: Debian's python3-aiosmtpd, which the local SMTP sink (compose/smtp-sink.py)
# and the tests' sinks run on, unless a Python that imports aiosmtpd is already there.
install_smtp_sink() {
    if smtp_sink_python >/dev/null; then
        return 0
    fi
    log "aiosmtpd not found: installing python3-aiosmtpd from Debian's packages"
    apt_install python3-aiosmtpd
    smtp_sink_python >/dev/null ||
        die "python3-aiosmtpd is installed, but /usr/bin/python3 cannot import aiosmtpd"
}

# ---------------------------------------------------------------------------------------------
# Waiting

# port_in_use PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# wait_for_port PORT [TIMEOUT_SECONDS] [PID]: waits until the port answers; gives up early
# when PID (the process that should open it) has died.
wait_for_port() {
    local port=$1 timeout=${2:-30} pid=${3:-} deadline=$((SECONDS + ${2:-30}))
    until port_in_use "$port"; do
        if [[ -n "$pid" ]] && ! proc_running "$pid"; then
            log "process $pid exited before port $port answered"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "port $port did not answer within ${timeout}s"
            return 1
        fi
        sleep 0.2
    done
}

# wait_for_http URL [TIMEOUT_SECONDS] [PID]: waits until URL answers 2xx; gives up early when
# PID has died.
wait_for_http() {
    local url=$1 timeout=${2:-60} pid=${3:-} deadline=$((SECONDS + ${2:-60}))
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        if [[ -n "$pid" ]] && ! proc_running "$pid"; then
            log "process $pid exited before $url answered"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "$url did not answer 2xx within ${timeout}s"
            return 1
        fi
        sleep 0.5
    done
}

# ---------------------------------------------------------------------------------------------
# Background processes tracked by pid files

# proc_running PID: true while PID exists and is not a zombie (a daemon whose parent has
# exited is reaped by PID 1, which may take a while; a zombie has stopped for our purposes).
proc_running() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 0
    [[ "$state" != Z ]]
}

# pid_alive PIDFILE [NAME]: true when the pid file names a live process (whose command line
# contains NAME, if given: a recycled pid does not count).
pid_alive() {
    local pidfile=$1 name=${2:-} pid
    [[ -s "$pidfile" ]] || return 1
    pid=$(<"$pidfile")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    proc_running "$pid" || return 1
    if [[ -n "$name" ]]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$name" || return 1
    fi
}

# start_daemon PIDFILE LOG CMD...: starts CMD in its own session (so a Ctrl-C in the calling
# terminal does not reach it), stdin from /dev/null, stdout+stderr appended to LOG.
start_daemon() {
    local pidfile=$1 logfile=$2
    shift 2
    mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
    setsid "$@" </dev/null >>"$logfile" 2>&1 &
    printf '%s\n' "$!" >"$pidfile"
}

# stop_pidfile PIDFILE NAME [TIMEOUT_SECONDS]: SIGTERM, wait, then SIGKILL; removes PIDFILE.
stop_pidfile() {
    local pidfile=$1 name=$2 timeout=${3:-${FM_STOP_TIMEOUT:-20}} pid deadline
    if ! pid_alive "$pidfile" "$name"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(<"$pidfile")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout))
    while proc_running "$pid"; do
        if ((SECONDS >= deadline)); then
            warn "$name (pid $pid) still running after ${timeout}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL: one cluster per data directory, driven with pg_ctl. PostgreSQL refuses to run as
# root, so as root the cluster belongs to the `postgres` OS user and every pg_* command runs
# through `runuser -u postgres --`; otherwise it belongs to the current user. The bootstrap
# superuser is that OS user, reached over the Unix socket with peer authentication; TCP
# (127.0.0.1 only) asks for a password (scram-sha-256).

pg_os_user() {
    if is_root; then echo postgres; else id -un; fi
}

# pg_run CMD...: runs CMD as the cluster's OS user (from / so that runuser has a readable cwd).
pg_run() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# pg_own PATH...: gives PATHs to the cluster's OS user.
pg_own() {
    if is_root; then
        chown postgres:postgres "$@"
    fi
}

# pg_socket_dir DATA_DIR: the Unix socket lives in the data directory, unless that path is too
# long for a socket (108 bytes on Linux); then in a short directory under /tmp.
pg_socket_dir() {
    local data=$1
    if ((${#data} <= 90)); then
        printf '%s\n' "$data"
    else
        printf '/tmp/fm-pg-%s\n' "$(printf '%s' "$data" | cksum | cut -d' ' -f1)"
    fi
}

# postgres_running DATA_DIR: true when the cluster of DATA_DIR is up.
postgres_running() {
    local data=$1
    [[ -f "$data/postmaster.pid" ]] || return 1
    PG_BIN=${PG_BIN:-$(pg_bin_dir)} || return 1
    pg_run "$PG_BIN/pg_ctl" status -D "$data" >/dev/null 2>&1
}

# postgres_port DATA_DIR / postgres_socket DATA_DIR: what the running cluster listens on
# (lines 4 and 5 of postmaster.pid).
postgres_port() { pg_run sed -n 4p "$1/postmaster.pid"; }
postgres_socket() { pg_run sed -n 5p "$1/postmaster.pid"; }

# init_postgres DATA_DIR: initdb once; later calls find PG_VERSION and do nothing.
init_postgres() {
    local data=$1
    if pg_run test -s "$data/PG_VERSION"; then
        return 0
    fi
    mkdir -p "$data"
    chmod 700 "$data"
    pg_own "$data"
    if ! pg_run test -w "$data"; then
        die "$(pg_os_user) cannot write $data (a parent directory is not traversable by" \
            "that user?): move the checkout, or chmod o+x its parent directories"
    fi
    log "initdb $data"
    pg_run "$PG_BIN/initdb" -D "$data" --encoding=UTF8 --locale=C \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null ||
        die "initdb failed for $data"
    # Where and how to listen is rewritten at every start (fm-local.conf); the rest is here.
    pg_run sh -c "printf '%s\n' '' '# Added by compose/lib.sh' \
        \"include_if_exists = 'fm-local.conf'\" >> '$data/postgresql.conf'"
}

# start_postgres DATA_DIR PORT [LOG] [SETTING=VALUE...]: initdb if needed, then start the
# cluster on 127.0.0.1:PORT. Leaves an already running cluster alone (and says on which port).
# Extra SETTING=VALUE pairs go to its configuration (e.g. fsync=off for throw-away clusters).
start_postgres() {
    local data=$1 port=$2 logfile=${3:-$1/postgres.log} running_port socket setting
    shift 2
    if (($# > 0)); then shift; fi
    PG_BIN=${PG_BIN:-$(pg_bin_dir)} || die "PostgreSQL is not installed (install_postgres)"
    init_postgres "$data"
    if postgres_running "$data"; then
        running_port=$(postgres_port "$data")
        log "PostgreSQL already running for $data (port $running_port)"
        if [[ "$running_port" != "$port" ]]; then
            warn "it listens on $running_port, not the requested $port; stop it first to move it"
        fi
        return 0
    fi
    if port_in_use "$port"; then
        die "port $port is already taken by another process, so PostgreSQL cannot start there;" \
            "stop that process or choose another port (docs/local-stack.md, \"Port in use\")"
    fi
    socket=$(pg_socket_dir "$data")
    mkdir -p "$socket" "$(dirname "$logfile")"
    pg_own "$socket"
    touch "$logfile"
    pg_own "$logfile"
    {
        echo "# Written by compose/lib.sh at every start; edits are lost."
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$socket'"
        for setting in "$@"; do
            echo "${setting%%=*} = '${setting#*=}'"
        done
    } | pg_run sh -c "cat > '$data/fm-local.conf'"
    log "starting PostgreSQL on 127.0.0.1:$port (data $data)"
    if ! pg_run "$PG_BIN/pg_ctl" start -D "$data" -l "$logfile" -w -t 60 >/dev/null; then
        show_log_tail "$logfile"
        die "PostgreSQL did not start"
    fi
}

# stop_postgres DATA_DIR: `pg_ctl stop -m fast`; nothing to do when it is not running.
stop_postgres() {
    local data=$1
    if ! postgres_running "$data"; then
        return 0
    fi
    log "stopping PostgreSQL ($data)"
    pg_run "$PG_BIN/pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null ||
        die "pg_ctl stop failed for $data"
}

# pg_admin_psql DATA_DIR PSQL_ARGS...: psql as the bootstrap superuser over the Unix socket.
pg_admin_psql() {
    local data=$1
    shift
    pg_run "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$(postgres_socket "$data")" \
        -p "$(postgres_port "$data")" -U "$(pg_os_user)" -d postgres "$@"
}

# ensure_pg_role_db DATA_DIR ROLE PASSWORD DATABASE [ROLE_OPTIONS]: creates the login role (or
# resets its password and options) and the database it owns, if missing.
ensure_pg_role_db() {
    local data=$1 role=$2 password=$3 db=$4 options=${5:-NOSUPERUSER}
    pg_admin_psql "$data" -v role="$role" -v password="$password" <<SQL
SELECT format('CREATE ROLE %I', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN $options PASSWORD %L', :'role', :'password') \gexec
SQL
    if [[ -z "$(pg_admin_psql "$data" -tA -v db="$db" \
        <<<"SELECT 1 FROM pg_database WHERE datname = :'db'")" ]]; then
        log "creating database $db (owner $role)"
        pg_admin_psql "$data" -v db="$db" -v role="$role" \
            <<<"SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role') \gexec"
    fi
}

# ---------------------------------------------------------------------------------------------
# Apache Kafka: one node per data directory, started through compose/kafka/broker (which holds
# the node's settings). Pid file "$FM_RUN_DIR/kafka.pid" for the single node of compose/up and
# the test stacks.

# start_kafka DATA_DIR PORT LOG [BROKER_ARGS...]: starts a single KRaft node (broker and
# controller) on 127.0.0.1:PORT, its controller on PORT+1, formatting DATA_DIR on the first
# start; returns when it answers. Leaves a running node alone. BROKER_ARGS go to
# compose/kafka/broker (e.g. --set log.flush.interval.messages=1).
start_kafka() {
    local data=$1 port=$2 logfile=$3 pidfile="$FM_RUN_DIR/kafka.pid" pid
    shift 3
    if pid_alive "$pidfile" kafka; then
        log "Apache Kafka already running (pid $(<"$pidfile"))"
        return 0
    fi
    for p in "$port" "$((port + 1))"; do
        if port_in_use "$p"; then
            die "port $p is already taken by another process, so Kafka cannot start there;" \
                "stop that process or choose another port (docs/local-stack.md, \"Port in use\")"
        fi
    done
    log "starting Apache Kafka $(kafka_version) on 127.0.0.1:$port (data $data)"
    start_daemon "$pidfile" "$logfile" "$FM_COMPOSE_DIR/kafka/broker" run \
        --data "$data" --port "$port" "$@"
    pid=$(<"$pidfile")
    if ! wait_for_kafka "127.0.0.1:$port" "${FM_KAFKA_START_TIMEOUT:-90}" "$pid"; then
        show_log_tail "$logfile"
        die "Apache Kafka did not start (log $logfile)"
    fi
}

# wait_for_kafka HOST:PORT [TIMEOUT_SECONDS] [PID]: waits until the broker answers a metadata
# request with itself among the brokers (a listening port is not enough: the socket opens
# before the node has joined its quorum). Gives up early when PID has died.
wait_for_kafka() {
    local address=$1 timeout=${2:-90} pid=${3:-} deadline=$((SECONDS + ${2:-90}))
    until kafka_answers "$address"; do
        if [[ -n "$pid" ]] && ! proc_running "$pid"; then
            log "process $pid exited before Kafka answered on $address"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "Kafka did not answer on $address within ${timeout}s"
            return 1
        fi
        sleep 0.5
    done
}

# kafka_answers HOST:PORT: true when a Kafka ApiVersions request on HOST:PORT gets an answer
# with error code 0 (bash's /dev/tcp; no client tools needed).
kafka_answers() {
    local host=${1%:*} port=${1##*:} reply
    # ApiVersions v0: length 16 (0x10), api key 18 (0x12), version 0, correlation id 1, client
    # id "fm" (length 2).
    reply=$(timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port || exit 1
        printf '\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x01\x00\x02fm' >&3
        head -c 10 <&3 | od -An -tx1" 2>/dev/null) || return 1
    # length (4 bytes), correlation id 00 00 00 01, error code 00 00.
    [[ "$(echo $reply | cut -d' ' -f5-10)" == "00 00 00 01 00 00" ]]
}

# kafka_brokers HOST:PORT: prints the node ids of the brokers the cluster's metadata lists (the
# registered, unfenced ones), one per line, as the node on HOST:PORT sees them; fails when it
# does not answer. A Metadata v4 request for no topic, read with bash alone.
kafka_brokers() {
    local host=${1%:*} port=${1##*:} hex bytes count at i length
    # Metadata v4: length 17 (0x11), api key 3, version 4, correlation id 1, client id "fm",
    # topics: an empty array (brokers only), allow_auto_topic_creation false.
    hex=$(timeout 5 bash -c "exec 3<>/dev/tcp/$host/$port || exit 1
        printf '\x00\x00\x00\x11\x00\x03\x00\x04\x00\x00\x00\x01\x00\x02fm\x00\x00\x00\x00\x00' >&3
        size=\$(dd bs=1 count=4 <&3 2>/dev/null | od -An -tu1 | awk '{print \$1*16777216+\$2*65536+\$3*256+\$4}')
        ((size > 0 && size < 65536)) || exit 1
        dd bs=1 count=\"\$size\" <&3 2>/dev/null | od -An -tx1 -v" 2>/dev/null) || return 1
    read -r -a bytes <<<"${hex//$'\n'/ }"
    # correlation id (4 bytes), throttle time (4), the brokers array: count (4), then each
    # broker: node id (4), host (int16 length + bytes), port (4), rack (int16 length, -1: none).
    ((${#bytes[@]} >= 12)) || return 1
    [[ "${bytes[*]:0:4}" == "00 00 00 01" ]] || return 1
    count=$((16#${bytes[8]}${bytes[9]}${bytes[10]}${bytes[11]}))
    at=12
    for ((i = 0; i < count; i++)); do
        ((at + 6 <= ${#bytes[@]})) || return 1
        echo $((16#${bytes[at]}${bytes[at + 1]}${bytes[at + 2]}${bytes[at + 3]}))
        length=$((16#${bytes[at + 4]}${bytes[at + 5]}))
        at=$((at + 6 + length + 4))
        length=$((16#${bytes[at]}${bytes[at + 1]}))
        ((length == 65535)) && length=0
        at=$((at + 2 + length))
    done
}

# stop_kafka [TIMEOUT_SECONDS]: SIGTERM (Kafka's controlled shutdown: leadership moves, the log
# is closed cleanly, so the next start needs no recovery), SIGKILL after TIMEOUT (default 60).
stop_kafka() { stop_pidfile "$FM_RUN_DIR/kafka.pid" kafka "${1:-60}"; }

# ---------------------------------------------------------------------------------------------
# Keycloak: the OpenID Connect provider of the local stack and of the tests that need tokens
# (docs/identity.md). One optimized server per install (kc.sh build, done once), shared by every
# stack on the machine; each stack gets a home of its own (bin/ and data/ real, lib/, conf/,
# themes/, providers/ links into the install), a dev-file (H2) database copied from a seed made
# once per realm file, and a pid file "$FM_RUN_DIR/keycloak.pid". HTTP on PORT, management
# (health) on PORT+1, both on 127.0.0.1.

# keycloak_home: where install_keycloak puts the built server (FM_KEYCLOAK_HOME overrides).
keycloak_home() {
    printf '%s\n' "${FM_KEYCLOAK_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/funeral-manager/keycloak-$FM_KEYCLOAK_VERSION}"
}

# keycloak_java: prints a java binary of version 21 or newer (Keycloak 26 needs 21+):
# FM_KEYCLOAK_JAVA, then $JAVA_HOME/bin/java, java on PATH, then the newest JDK under
# /usr/lib/jvm. Fails when there is none.
keycloak_java() {
    local java major
    for java in ${FM_KEYCLOAK_JAVA:-} ${JAVA_HOME:+$JAVA_HOME/bin/java} java \
        $(printf '%s\n' /usr/lib/jvm/*/bin/java | sort -rV); do
        command -v "$java" >/dev/null || continue
        major=$(java_major "$java")
        if [[ -n "$major" ]] && ((major >= 21)); then
            readlink -f "$(command -v "$java")"
            return 0
        fi
    done
    return 1
}

# The build-time options of the optimized server (kc.sh build); part of the install's stamp.
FM_KEYCLOAK_BUILD_OPTIONS=(--db=dev-file --health-enabled=true)

# install_keycloak: Keycloak FM_KEYCLOAK_VERSION from Maven Central (mvn dependency:unpack of
# compose/keycloak/pom.xml) into keycloak_home, built
# once with FM_KEYCLOAK_BUILD_OPTIONS, unless it is there already (same pom, same options).
# Java 21+ comes from Debian's packages when the machine has none.
install_keycloak() {
    local home pom="$FM_COMPOSE_DIR/keycloak/pom.xml" stamp staging java started=$SECONDS
    home=$(keycloak_home)
    stamp="$FM_KEYCLOAK_VERSION ${FM_KEYCLOAK_BUILD_OPTIONS[*]} $(sha256sum "$pom" | cut -d' ' -f1)"
    if ! java=$(keycloak_java); then
        log "no Java 21 or newer found: installing it from Debian's packages"
        apt_install openjdk-21-jre-headless || apt_install openjdk-25-jre-headless ||
            die "Keycloak $FM_KEYCLOAK_VERSION needs Java 21 or newer, and Debian offers none here;" \
                "install one and set FM_KEYCLOAK_JAVA to its java binary"
        java=$(keycloak_java) || die "a JDK was installed, but no java 21+ was found"
    fi
    if [[ -f "$home/.installed" && "$(<"$home/.installed")" == "$stamp" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || apt_install maven
    log "installing Keycloak $FM_KEYCLOAK_VERSION from Maven Central into $home (once)"
    staging="$home.partial"
    rm -rf "$staging"
    mkdir -p "$staging"
    JAVA_HOME=$(dirname "$(dirname "$java")") \
        mvn --batch-mode --quiet --no-transfer-progress -Dstyle.color=never -f "$pom" \
        -Dkeycloak.version="$FM_KEYCLOAK_VERSION" \
        dependency:unpack -DoutputDirectory="$staging" -DmarkersDirectory="$staging/markers" \
        </dev/null >&2 || die "mvn could not resolve Keycloak $FM_KEYCLOAK_VERSION (see above)"
    local unpacked="$staging/keycloak-$FM_KEYCLOAK_VERSION"
    [[ -x "$unpacked/bin/kc.sh" ]] || die "mvn finished, but $unpacked has no bin/kc.sh"
    log "building the optimized Keycloak server (kc.sh build ${FM_KEYCLOAK_BUILD_OPTIONS[*]})"
    JAVA_HOME=$(dirname "$(dirname "$java")") "$unpacked/bin/kc.sh" build \
        "${FM_KEYCLOAK_BUILD_OPTIONS[@]}" </dev/null >"$staging/build.log" 2>&1 || {
        show_log_tail "$staging/build.log"
        die "kc.sh build failed (log $staging/build.log)"
    }
    printf '%s\n' "$stamp" >"$unpacked/.installed"
    rm -rf "$home"
    mv "$unpacked" "$home"
    rm -rf "$staging"
    log "Keycloak $FM_KEYCLOAK_VERSION installed and built in $(elapsed_since "$started")"
}

# keycloak_stack_home DATA_DIR: makes DATA_DIR a Keycloak home of its own (idempotent): bin/
# with a copy of kc.sh (kc.sh takes its home from its own resolved path), data/, and links to
# the install's lib/, conf/, themes/ and providers/.
keycloak_stack_home() {
    local data=$1 home dir
    home=$(keycloak_home)
    mkdir -p "$data/bin" "$data/data"
    cp -f "$home/bin/kc.sh" "$data/bin/kc.sh"
    for dir in lib conf themes providers; do
        ln -sfn "$home/$dir" "$data/$dir"
    done
}

# keycloak_seed: prints the directory of an H2 database that holds compose/keycloak/realm.json
# imported (kc.sh import, no server) and the master realm's administrator FM_KEYCLOAK_ADMIN /
# FM_KEYCLOAK_ADMIN_PASSWORD (kc.sh bootstrap-admin: Keycloak creates its bootstrap administrator
# only when it creates the master realm itself, which the import already did, so without this
# the administrator start_keycloak names never existed), made once per realm file, administrator
# and version and cached beside the install. Creating Keycloak's schema costs most of a first
# start; a copy of the seed skips it.
keycloak_seed() {
    local realm="$FM_COMPOSE_DIR/keycloak/realm.json" home seed work java started=$SECONDS
    local admin=${FM_KEYCLOAK_ADMIN:-admin} admin_password=${FM_KEYCLOAK_ADMIN_PASSWORD:-admin}
    home=$(keycloak_home)
    seed="$home.seeds/$({
        cat "$realm"
        printf 'bootstrap-admin %s %s\n' "$admin" "$admin_password"
    } | sha256sum | cut -c1-16)"
    if [[ -f "$seed/.complete" ]]; then
        printf '%s\n' "$seed"
        return 0
    fi
    java=$(keycloak_java) || die "no Java 21 or newer for Keycloak (run install_keycloak)"
    work=$(mktemp -d "$home.seeds.XXXXXX")
    keycloak_stack_home "$work"
    log "seeding Keycloak's database with $realm (once per realm file)"
    JAVA_HOME=$(dirname "$(dirname "$java")") "$work/bin/kc.sh" import --file "$realm" \
        --db-url="jdbc:h2:file:$work/data/h2/keycloakdb;NON_KEYWORDS=VALUE" \
        </dev/null >"$work/import.log" 2>&1 || {
        show_log_tail "$work/import.log"
        rm -rf "$work"
        die "kc.sh import of $realm failed"
    }
    FM_SEED_ADMIN=$admin FM_SEED_ADMIN_PASSWORD=$admin_password \
        JAVA_HOME=$(dirname "$(dirname "$java")") "$work/bin/kc.sh" bootstrap-admin user \
        --username:env FM_SEED_ADMIN --password:env FM_SEED_ADMIN_PASSWORD --no-prompt \
        --db-url="jdbc:h2:file:$work/data/h2/keycloakdb;NON_KEYWORDS=VALUE" \
        </dev/null >"$work/admin.log" 2>&1 || {
        show_log_tail "$work/admin.log"
        rm -rf "$work"
        die "kc.sh bootstrap-admin (the master realm's administrator $admin) failed"
    }
    mkdir -p "$(dirname "$seed")"
    rm -rf "$seed"
    mv "$work/data/h2" "$seed"
    touch "$seed/.complete"
    rm -rf "$work"
    log "Keycloak seed $seed made in $(elapsed_since "$started")"
    printf '%s\n' "$seed"
}

# start_keycloak DATA_DIR PORT LOG: starts Keycloak on 127.0.0.1:PORT (management and health on
# PORT+1) with the realm of compose/keycloak/realm.json, its database copied from the seed on the
# first start; returns when the realm's discovery document answers. Leaves a running one alone.
# The master realm's administrator is FM_KEYCLOAK_ADMIN / FM_KEYCLOAK_ADMIN_PASSWORD
# (admin/admin by default: a local stack only).
start_keycloak() {
    local data=$1 port=$2 logfile=$3 pidfile="$FM_RUN_DIR/keycloak.pid" java seed pid p
    local started=$SECONDS
    if pid_alive "$pidfile" kc.sh; then
        log "Keycloak already running (pid $(<"$pidfile"))"
        return 0
    fi
    for p in "$port" "$((port + 1))"; do
        if port_in_use "$p"; then
            die "port $p is already taken by another process, so Keycloak cannot start there;" \
                "stop that process or choose another port (FM_KEYCLOAK_PORT)"
        fi
    done
    java=$(keycloak_java) || die "no Java 21 or newer for Keycloak (run install_keycloak)"
    seed=$(keycloak_seed)
    keycloak_stack_home "$data"
    if [[ ! -d "$data/data/h2" ]]; then
        cp -r "$seed" "$data/data/h2"
    fi
    log "starting Keycloak $FM_KEYCLOAK_VERSION on 127.0.0.1:$port (data $data)"
    start_daemon "$pidfile" "$logfile" env JAVA_HOME="$(dirname "$(dirname "$java")")" \
        JAVA_OPTS_KC_HEAP="${FM_KEYCLOAK_HEAP:--Xms64m -Xmx512m}" \
        KC_BOOTSTRAP_ADMIN_USERNAME="${FM_KEYCLOAK_ADMIN:-admin}" \
        KC_BOOTSTRAP_ADMIN_PASSWORD="${FM_KEYCLOAK_ADMIN_PASSWORD:-admin}" \
        "$data/bin/kc.sh" start --optimized --cache=local \
        --http-enabled=true --http-host=127.0.0.1 --http-port="$port" \
        --http-management-port="$((port + 1))" --hostname-strict=false \
        --db-url="jdbc:h2:file:$data/data/h2/keycloakdb;NON_KEYWORDS=VALUE"
    pid=$(<"$pidfile")
    if ! wait_for_http "http://127.0.0.1:$port/realms/funeral-manager/.well-known/openid-configuration" \
        "${FM_KEYCLOAK_START_TIMEOUT:-240}" "$pid"; then
        show_log_tail "$logfile"
        die "Keycloak did not start (log $logfile)"
    fi
    log "Keycloak answers on 127.0.0.1:$port ($(elapsed_since "$started"))"
}

# stop_keycloak [TIMEOUT_SECONDS]: SIGTERM, SIGKILL after TIMEOUT (default 30).
stop_keycloak() { stop_pidfile "$FM_RUN_DIR/keycloak.pid" kc.sh "${1:-30}"; }

# keycloak_token ISSUER GRANT_ARGS...: prints the access token the realm's token endpoint issues
# for a grant (e.g. `-d grant_type=password -d client_id=fm-web -d username=director-a
# -d password=director-a`). Fails with a sentence when it issues none.
keycloak_token() {
    local issuer=$1 reply token
    shift
    reply=$(curl -sS --max-time 30 "$@" "$issuer/protocol/openid-connect/token") ||
        die "the token endpoint of $issuer did not answer"
    token=$(printf '%s' "$reply" | sed -nE 's/.*"access_token":"([^"]+)".*/\1/p')
    [[ -n "$token" ]] || die "$issuer issued no token: $reply"
    printf '%s\n' "$token"
}

# ---------------------------------------------------------------------------------------------
# The SMTP sink: compose/smtp-sink.py (aiosmtpd), every accepted message one file in a Maildir.
# Pid file "$FM_RUN_DIR/smtp-sink.pid".

# start_smtp_sink PORT MAILDIR LOG: starts the sink on 127.0.0.1:PORT writing to MAILDIR
# (created with its tmp/, new/ and cur/ on the first start). Leaves a running sink alone.
start_smtp_sink() {
    local port=$1 maildir=$2 logfile=$3 pidfile="$FM_RUN_DIR/smtp-sink.pid" python pid
    python=$(smtp_sink_python) || die "no Python imports aiosmtpd (install_smtp_sink)"
    if pid_alive "$pidfile" smtp-sink; then
        log "SMTP sink already running (pid $(<"$pidfile"))"
        return 0
    fi
    if port_in_use "$port"; then
        die "port $port is already taken by another process, so the SMTP sink cannot start there;" \
            "stop that process or choose another port (docs/local-stack.md, \"Port in use\")"
    fi
    # Not MAILDIR itself: Python's Maildir creates tmp/, new/ and cur/ only in a new directory.
    mkdir -p "$(dirname "$maildir")"
    log "starting the SMTP sink on 127.0.0.1:$port (Maildir $maildir)"
    start_daemon "$pidfile" "$logfile" "$python" "$FM_COMPOSE_DIR/smtp-sink.py" \
        --host 127.0.0.1 --port "$port" --maildir "$maildir"
    pid=$(<"$pidfile")
    if ! wait_for_port "$port" 15 "$pid"; then
        show_log_tail "$logfile"
        die "the SMTP sink did not start"
    fi
}

stop_smtp_sink() { stop_pidfile "$FM_RUN_DIR/smtp-sink.pid" smtp-sink; }

# ---------------------------------------------------------------------------------------------
# The project's services. Pid file "$FM_RUN_DIR/NAME.pid", log "$FM_LOG_DIR/NAME.log".

# cargo_target_dir: where cargo puts build output (honours CARGO_TARGET_DIR and .cargo/config).
cargo_target_dir() {
    local dir
    dir=$(cd "$FM_REPO_ROOT" && cargo metadata --no-deps --format-version 1 2>/dev/null |
        grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4) || true
    printf '%s\n' "${dir:-${CARGO_TARGET_DIR:-$FM_REPO_ROOT/target}}"
}

# service_binary NAME: the binary of a workspace member, of the profile FM_SERVICE_PROFILE
# (release unless set; `debug` for what a plain `cargo build` or the test runner built).
service_binary() {
    printf '%s/%s/%s\n' "${FM_TARGET_DIR:=$(cargo_target_dir)}" "${FM_SERVICE_PROFILE:-release}" "$1"
}

# stack_env NAME PORT [INSTANCE]: the service's FM_* settings as KEY=VALUE lines, from the one
# description of the stack (`fm-stack env`, crate stack/) and the stack's facts in the caller's
# FM_STACK_* variables (docs/local-stack.md, "One description of the stack").
stack_env() {
    local name=$1 port=$2 instance=${3:-} bin
    bin=$(service_binary fm-stack)
    [[ -x "$bin" ]] || die "$bin not found: build it first (cargo build$([[ "${FM_SERVICE_PROFILE:-release}" == release ]] && echo ' --release') -p stack)"
    "$bin" env "$name" --port "$port" ${instance:+--instance "$instance"} </dev/null
}

# stack_prepare: `fm-stack prepare`: fmctl topics ensure, then projection-service migrate, with
# the stack's settings (the binaries of FM_SERVICE_PROFILE); their output on stderr.
stack_prepare() {
    "$(service_binary fm-stack)" prepare --bin-dir "$(dirname "$(service_binary fmctl)")" </dev/null
}

# start_service NAME PORT [INSTANCE]: starts `service_binary NAME` in the background with the
# environment `stack_env NAME PORT [INSTANCE]` describes (FM_HTTP__HOST=127.0.0.1,
# FM_HTTP__PORT=PORT, FM_LOG__FORMAT=json and what it needs of the stack's FM_STACK_* facts), on
# top of the caller's environment minus the FM_STACK_* variables. Leaves a running instance
# alone.
start_service() {
    local name=$1 port=$2 instance=${3:-} bin pidfile
    pidfile="$FM_RUN_DIR/${name}${instance:+-$instance}.pid"
    bin=$(service_binary "$name")
    [[ -x "$bin" ]] || die "$bin not found: build it first (cargo build$([[ "${FM_SERVICE_PROFILE:-release}" == release ]] && echo ' --release') -p $name)"
    if pid_alive "$pidfile" "$name"; then
        log "$name already running (pid $(<"$pidfile"))"
        if [[ "$bin" -nt "$pidfile" ]]; then
            warn "$name was built again since it started; compose/down && compose/up to run the new build"
        fi
        return 0
    fi
    if port_in_use "$port"; then
        die "port $port is already taken by another process, so $name cannot start there;" \
            "stop that process or choose another port (docs/local-stack.md, \"Port in use\")"
    fi
    log "starting $name on 127.0.0.1:$port"
    stack_daemon "$name" "$port" "$instance" "$pidfile" \
        "$FM_LOG_DIR/${name}${instance:+-$instance}.log"
}

# stack_daemon NAME PORT INSTANCE PIDFILE LOG: start_daemon of `service_binary NAME` with the
# settings `stack_env NAME PORT INSTANCE` prints (INSTANCE may be empty) on top of the caller's
# environment minus its FM_STACK_* facts; a setting the caller puts before the call
# (`FM_SIMULATOR__HANG=30000 stack_daemon ...`) reaches the service too.
stack_daemon() {
    local name=$1 port=$2 instance=$3 pidfile=$4 logfile=$5 settings
    settings=$(stack_env "$name" "$port" "$instance") || die "fm-stack env $name failed"
    (
        # In a subshell: the settings reach the service's environment (not its command line)
        # and nothing of them stays in the caller's.
        local variable
        for variable in $(compgen -v FM_STACK_ || true); do unset "$variable"; done
        while IFS= read -r variable; do
            [[ -n "$variable" ]] && export "$variable"
        done <<<"$settings"
        start_daemon "$pidfile" "$logfile" "$(service_binary "$name")"
    )
}

stop_service() { stop_pidfile "$FM_RUN_DIR/$1.pid" "$1" "${2:-}"; }

# wait_for_ready NAME PORT [TIMEOUT_SECONDS]: waits for GET /ready to answer 2xx; on failure
# shows the end of the service's log and fails.
wait_for_ready() {
    local name=$1 port=$2 timeout=${3:-${FM_READY_TIMEOUT:-60}} pid=
    if [[ -s "$FM_RUN_DIR/$name.pid" ]]; then
        pid=$(<"$FM_RUN_DIR/$name.pid")
    fi
    if ! wait_for_http "http://127.0.0.1:$port/ready" "$timeout" "$pid"; then
        show_log_tail "$FM_LOG_DIR/$name.log"
        die "$name is not ready (http://127.0.0.1:$port/ready); its log: $FM_LOG_DIR/$name.log"
    fi
    log "$name ready on 127.0.0.1:$port"
}
