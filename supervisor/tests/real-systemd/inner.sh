#!/bin/sh
# The first process of the test's private namespaces (pid, mount, uts, ipc,
# net, cgroup): builds a root in RAM and execs the distribution's systemd as
# PID 1 in it. Run by `unshare` from supervisor/tests/cli/real_systemd.rs.
#
#   inner.sh WORK
#
# WORK (a host directory) holds `ovl/` and `root/` (empty mount points) and
# `seed/`, a tree copied over the new root (units, binaries, config).
#
# Hazards, all handled here:
# - Nothing may reach the host: the root is an overlay of the host's `/`
#   whose upper layer is a tmpfs (overlayfs refuses an upper layer inside the
#   lower one, and RAM keeps the host's disk untouched); `/run` and `/tmp`
#   are fresh tmpfs, or systemd-tmpfiles (`D /tmp`) would empty the host's
#   /tmp; /proc/sys and /sys are read-only, so no sysctl of the host changes
#   and udev stays off; /dev has no kmsg and no console.
# - Mounts stay in this mount namespace (`--propagation private`, then
#   rprivate again here) and vanish with it.
set -eu
# pivot_root and mount live in sbin, which a caller's PATH may lack.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

work=$1
root=$work/root

mount --make-rprivate /
mount -t tmpfs -o mode=0755 real-systemd-overlay "$work/ovl"
mkdir "$work/ovl/upper" "$work/ovl/work"
mount -t overlay -o "lowerdir=/,upperdir=$work/ovl/upper,workdir=$work/ovl/work" \
  real-systemd-root "$root"

mount -t proc proc "$root/proc"
for path in sys sysrq-trigger; do
  # /proc/sysrq-trigger does not exist on every kernel.
  if [ -e "$root/proc/$path" ]; then
    mount --bind "$root/proc/$path" "$root/proc/$path"
    mount -o remount,bind,ro "$root/proc/$path"
  fi
done
mount -t sysfs -o ro sysfs "$root/sys"
mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"

mount -t tmpfs -o mode=0755,nosuid real-systemd-dev "$root/dev"
for device in null zero full random urandom tty; do
  touch "$root/dev/$device"
  mount --bind "/dev/$device" "$root/dev/$device"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev real-systemd-shm "$root/dev/shm"

mount -t tmpfs -o mode=0755,nosuid,nodev real-systemd-run "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev real-systemd-tmp "$root/tmp"

cp -a "$work/seed/." "$root/"

cd "$root"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
cd /

# systemd detects the container by $container; everything else of the
# caller's environment stays outside.
exec setpriv --bounding-set -sys_module,-sys_time,-sys_rawio,-wake_alarm \
  env -i container=real-systemd-test \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --system --unit=rsd.target --log-target=journal \
  --log-level=debug --show-status=no
