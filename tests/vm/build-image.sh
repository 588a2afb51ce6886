#!/usr/bin/env bash
# Build the stock-host test VM: a Debian 12 (bookworm) root filesystem with its stock kernel
# (linux-image-amd64, 6.1), systemd (cgroup v2 unified, Debian's default), crun, runsc, runc,
# busybox-static, iproute2, iptables (the nft backend, Debian's default) and python3 (3.11)
# with a venv holding sandtree's Python dependencies, as an ext4 disk image plus the kernel
# and initrd to boot it with. Needs root and the network (deb.debian.org, PyPI); run once,
# by tests/vm/kit.py, which keys the result by a hash of this file and the requirements.
#
#   build-image.sh OUT_DIR REQUIREMENTS_FILE CHECKOUT
#
# OUT_DIR gets rootfs.img (raw ext4), vmlinuz, initrd.img and build.log. Nothing outside
# OUT_DIR is changed: the chroot's mounts live in a private mount namespace.
set -euo pipefail

out=$1
requirements=$2
checkout=$3
mirror=${SANDTREE_VM_MIRROR:-http://deb.debian.org/debian}
image_size=${SANDTREE_VM_IMAGE_SIZE:-8G}
root="$out/rootfs"

if [ "${SANDTREE_VM_IN_NS:-}" != 1 ]; then
    # Re-run inside a private mount namespace so that a failed build leaves no mount behind.
    mkdir -p "$out"
    SANDTREE_VM_IN_NS=1 exec unshare -m --propagation private "$0" "$@"
fi

step() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S)" "$SECONDS s" "$*"; }

PACKAGES=(
    linux-image-amd64 systemd systemd-sysv udev dbus kmod procps util-linux e2fsprogs
    iproute2 iptables crun runc runsc busybox-static python3 python3-venv ca-certificates
    zstd skopeo umoci docker-registry less
)

step "debootstrap bookworm into $root"
rm -rf "$root"
debootstrap --variant=minbase bookworm "$root" "$mirror"

step "configure the guest"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# Packages installed in the chroot must not start their services here.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"

step "apt-get install ${PACKAGES[*]}"
export DEBIAN_FRONTEND=noninteractive
chroot "$root" apt-get update -qq
chroot "$root" apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null

echo sandtree-vm > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 sandtree-vm\n' > "$root/etc/hosts"
cat > "$root/etc/fstab" <<'EOF'
/dev/vda  /         ext4  defaults,errors=remount-ro  0 1
EOF
mkdir -p "$root/mnt/host" "$root/mnt/job" "$root/var/cache/sandtree-test/debian-minbase"
printf '9p\n9pnet_virtio\noverlay\n' > "$root/etc/modules-load.d/sandtree-vm.conf"
chroot "$root" passwd -d root >/dev/null
rm -f "$root/etc/machine-id"
chroot "$root" systemd-machine-id-setup >/dev/null

# slirp's fixed addresses: the guest is 10.0.2.15, the host (and "the internet") 10.0.2.2. A
# static address: no DHCP wait at boot. Used only when the kit gives the VM a NIC.
cat > "$root/etc/systemd/network/10-slirp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
DNS=10.0.2.3
EOF
chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1

# The job runner: runs /mnt/job/job.sh as root once the system is up, keeps its output and
# exit status in /mnt/job, then powers the VM off (QEMU exits, which is what the kit waits for).
cat > "$root/usr/local/sbin/sandtree-vm-job" <<'EOF'
#!/bin/bash
set -u
job=/mnt/job
# The 9p shares are mounted here, not from fstab: a virtio-9p channel can still be probing
# when systemd mounts local filesystems ("no channels available for device job"), so each
# mount is retried for up to 60 s.
share() {  # tag dir options
    mkdir -p "$2"
    for _ in $(seq 300); do
        mountpoint -q "$2" && return 0
        mount -t 9p -o "trans=virtio,version=9p2000.L,msize=262144,$3" "$1" "$2" 2>/dev/null \
            && return 0
        sleep 0.2
    done
    echo "sandtree-vm-job: cannot mount the 9p share $1 on $2" > /dev/console
    return 1
}
share host /mnt/host ro
share job "$job" rw
# More shares, as the kit lists them: "tag directory options" per line.
if [ -f "$job/shares" ]; then
    while read -r tag dir opts; do share "$tag" "$dir" "$opts"; done < "$job/shares"
fi
if ! mountpoint -q "$job" || [ ! -f "$job/job.sh" ]; then
    echo "sandtree-vm-job: no job in $job; powering off" > /dev/console
    systemctl poweroff --force
    exit 0
fi
cut -d' ' -f1 /proc/uptime > "$job/uptime-at-start"
export PATH=/opt/sandtree/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# No PYTHONPYCACHEPREFIX: the checkout's own __pycache__ (same python3.11) is read as it is.
export HOME=/root PYTHONUNBUFFERED=1
export SANDTREE_VM_OUT="$job/out"
mkdir -p "$SANDTREE_VM_OUT"
cd /root
bash "$job/job.sh" > "$job/output.log" 2>&1 < /dev/null
rc=$?
cut -d' ' -f1 /proc/uptime > "$job/uptime-at-end"
echo "$rc" > "$job/rc.tmp" && mv "$job/rc.tmp" "$job/rc"
sync
echo "sandtree-vm-job: job exited $rc; powering off" > /dev/console
systemctl poweroff --force
EOF
chmod +x "$root/usr/local/sbin/sandtree-vm-job"
cat > "$root/etc/systemd/system/sandtree-vm-job.service" <<'EOF'
[Unit]
Description=Run the sandtree VM job the host shared in /mnt/job
After=local-fs.target remote-fs.target network.target systemd-networkd.service

[Service]
# idle: start once the boot's other jobs are dispatched, so the job sees a settled system.
Type=idle
ExecStart=/usr/local/sbin/sandtree-vm-job
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
EOF
chroot "$root" systemctl enable sandtree-vm-job.service >/dev/null 2>&1
# Nothing here needs these, and each costs seconds of emulated boot.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer man-db.timer docker-registry.service getty@tty1.service; do
    chroot "$root" systemctl mask "$unit" >/dev/null 2>&1 || true
done
chroot "$root" systemctl set-default multi-user.target >/dev/null 2>&1

step "sandtree's Python dependencies: wheels built on the host, installed offline"
# The host's pip (its index, proxy and CA settings) fetches; the guest is the same Debian 12
# and python3.11, so the host's wheels fit it.
python3 -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$root/tmp/wheels" \
    -r "$requirements" hatchling editables
cp "$requirements" "$root/tmp/requirements.txt"
guest() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
guest python3 -m venv /opt/sandtree/venv
guest /opt/sandtree/venv/bin/pip install --quiet --disable-pip-version-check --no-index \
    --find-links /tmp/wheels -r /tmp/requirements.txt hatchling editables
# sandtree itself, editable: its .pth points at /mnt/host/src, where each boot mounts the
# current checkout; the dist-info gives the `sandtree` console script.
mount --bind -o ro "$checkout" "$root/mnt/host"
guest /opt/sandtree/venv/bin/pip install --quiet --disable-pip-version-check --no-index \
    --no-deps --no-build-isolation -e /mnt/host
umount "$root/mnt/host"
ln -sf /opt/sandtree/venv/bin/sandtree "$root/usr/local/bin/sandtree"

step "the isolation tests' Debian minbase image, at the path they look for it"
# On the guest's own disk: imported from a 9p share, its 6,700 files took minutes under TCG.
minbase=/var/cache/sandtree-test/debian-minbase
if [ -x "$minbase/usr/bin/apt-get" ]; then
    cp -a "$minbase/." "$root$minbase/"
else
    debootstrap --variant=minbase bookworm "$root$minbase" "$mirror"
    rm -rf "$root$minbase"/var/cache/apt/archives/*.deb "$root$minbase"/var/lib/apt/lists/*
fi

step "trim and pack"
rm -f "$root/usr/sbin/policy-rc.d" "$root/tmp/requirements.txt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
umount -R "$root/proc" "$root/dev" "$root/sys"
echo "nameserver 10.0.2.3" > "$root/etc/resolv.conf"
cp "$root"/boot/vmlinuz-* "$out/vmlinuz"
cp "$root"/boot/initrd.img-* "$out/initrd.img"
rm -f "$out/rootfs.img"
mkfs.ext4 -q -L sandtree-vm -d "$root" "$out/rootfs.img" "$image_size"
rm -rf "$root"
step "done: $(du -sh --apparent-size "$out/rootfs.img" | cut -f1) apparent, $(du -sh "$out/rootfs.img" | cut -f1) on disk"
