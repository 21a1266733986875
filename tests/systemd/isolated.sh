#!/usr/bin/env bash
# isolated.sh HARNESS ARGS...: runs the nspawn harness in a cgroup of its own.
#
# With --register=no --keep-unit, systemd-nspawn puts the container below ITS OWN cgroup
# ("…/payload"). On the CI host every caller sits in the root cgroup, so containers running at
# the same time would share "/payload/system.slice/…": a unit of one container would find the
# processes of the same-named unit of another container in "its" cgroup (it then never becomes
# garbage and a transient unit of that name cannot be created again, and stopping it would kill
# the other container's processes). A fresh cgroup per run keeps parallel containers apart.
set -euo pipefail
cg2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
if [[ -n $cg2 && -w $cg2 ]]; then
  own=$(sed -n 's|^0::||p' /proc/self/cgroup)
  dir=$cg2${own%/}/pullnix-nspawn-$$
  mkdir -p "$dir"
  echo $$ > "$dir/cgroup.procs"
  cleanup() {
    # Back to the parent, then remove the (now empty) tree bottom-up.
    echo $$ > "$cg2${own%/}/cgroup.procs" 2>/dev/null || true
    find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
  }
  trap cleanup EXIT
fi
bash "$@"
