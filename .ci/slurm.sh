#!/usr/bin/env bash
# A real single-node SLURM on localhost, for tests/integration/test_slurm.py and by hand.
#
#   .ci/slurm.sh install # apt-get install slurm-wlm munge slurmdbd mariadb-server when absent
#   .ci/slurm.sh start   # install (apt) when absent, configure, start the daemons, wait
#   .ci/slurm.sh stop    # stop every daemon this script started
#   .ci/slurm.sh status  # sinfo + the daemons' pids
#
# Needs root (apt, /etc/slurm, daemons). Job tracking: snakemake-executor-plugin-slurm
# 1.4 (the newest release compatible with this project's numpy/pandas pins) asks `sacct`
# for job states and has no other status command, so accounting runs through slurmdbd
# with a local MariaDB. Node: this host, 2 CPUs, the memory `free -m` reports, no
# cgroups (proctrack/linuxproc, task/none), no GRES. State and logs: $ATLAS_SLURM_DIR.
set -euo pipefail
STATE=${ATLAS_SLURM_DIR:-/tmp/atlas-slurm}
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
MARK="# written by atlas .ci/slurm.sh"
HOST=$(hostname -s)
MARIADB_SOCK=/run/mysqld/mysqld.sock

die() { echo "slurm.sh: $*" >&2; exit 1; }

install_packages() {
  local missing=()
  for cmd in munged slurmctld slurmd slurmdbd sacct mariadbd; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]} and not root, cannot apt-get install"
  echo "slurm.sh: installing slurm-wlm munge slurmdbd mariadb-server (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge slurmdbd mariadb-server >/dev/null
}

write_conf() {
  # never overwrite a slurm.conf this script did not write (a real cluster's)
  for f in "$CONF" "$DBDCONF"; do
    if [ -e "$f" ] && ! grep -qF "$MARK" "$f"; then die "$f exists and is not ours"; fi
  done
  local mem
  mem=$(free -m | awk '/^Mem:/ {print $2}')
  mkdir -p /etc/slurm "$STATE"/{ctld,d,log}
  cat >"$CONF" <<EOF
$MARK
ClusterName=atlasci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoreFlags=job_comment
ReturnToService=2
MinJobAge=300
SchedulerParameters=sched_interval=2
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=2 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$DBDCONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=atlasci
EOF
  chmod 600 "$DBDCONF"
}

start_munge() {
  pgrep -x munged >/dev/null && return
  [ -s /etc/munge/munge.key ] || {
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  }
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- /usr/sbin/munged
  touch "$STATE/started-munged"
}

start_mariadb() {
  if ! [ -S "$MARIADB_SOCK" ] || ! mariadb -e "select 1" >/dev/null 2>&1; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    (cd / && exec setsid mariadbd-safe) </dev/null >"$STATE/log/mariadb.log" 2>&1 &
    touch "$STATE/started-mariadb"
    for _ in $(seq 60); do mariadb -e "select 1" >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  mariadb -e "select 1" >/dev/null || die "MariaDB did not start: $(tail -5 "$STATE/log/mariadb.log")"
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'atlasci';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local n=$1 what=$2
  shift 2
  for _ in $(seq $((n * 2))); do "$@" >/dev/null 2>&1 && return; sleep 0.5; done
  die "$what not ready after ${n}s; logs in $STATE/log: $(tail -3 "$STATE"/log/*.log 2>/dev/null)"
}

start() {
  install_packages
  write_conf
  start_munge
  start_mariadb
  pgrep -x slurmdbd >/dev/null || slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster atlasci >/dev/null 2>&1 || true
  # an account for the submitting user, as real clusters have (config cluster.account)
  sacctmgr -i add account atlasci cluster=atlasci >/dev/null 2>&1 || true
  sacctmgr -i add user "$(id -un)" account=atlasci cluster=atlasci >/dev/null 2>&1 || true
  pgrep -x slurmctld >/dev/null || slurmctld
  wait_for 30 slurmctld scontrol ping
  pgrep -x slurmd >/dev/null || slurmd
  wait_for 30 "slurmd (node idle)" sh -c "sinfo -h -N -o %t | grep -qx idle"
  echo "slurm.sh: up: $(sinfo -h -N -o '%N %c CPUs %m MB %t')"
}

stop_pidfile() {  # stop_pidfile FILE: SIGTERM the daemon, wait up to 10 s
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  [ -e "$CONF" ] && grep -qF "$MARK" "$CONF" || return 0
  scancel --user=root 2>/dev/null || true
  stop_pidfile "$STATE/slurmd.pid"
  stop_pidfile "$STATE/slurmctld.pid"
  stop_pidfile "$STATE/slurmdbd.pid"
  if [ -e "$STATE/started-mariadb" ]; then
    mariadb-admin shutdown 2>/dev/null || true
    rm -f "$STATE/started-mariadb"
  fi
  if [ -e "$STATE/started-munged" ]; then
    stop_pidfile /run/munge/munged.pid
    rm -f "$STATE/started-munged"
  fi
  echo "slurm.sh: stopped"
}

case ${1:-} in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  status) sinfo; pgrep -a 'slurm|munged|mariadbd' || true ;;
  *) die "usage: $0 install|start|stop|status" ;;
esac
