#!/usr/bin/env bash
# Functional check of an aarch64 bundle under qemu-user emulation (correctness only, never latency).
#
# Builds the raspberry-pi-5 bundle (ONNX Runtime fp32) and a cpu-int8 bundle (ONNX Runtime int8,
# the fallback a Jetson's CPU would run) from the shipped demo on this x86 host, runs each bundle's
# own torch-free runtime inside an arm64 Debian root under qemu-aarch64 (Cortex-A76), and compares the
# logits with the same bundle run on the host: fp32 within 1e-4 relative, int8 within the target's
# top-1 agreement gate. Needs root, apt (qemu-user-static, debootstrap) and the Debian mirror apt uses.
#
#   scripts/check_aarch64.sh [OUT_DIR]        (default out/aarch64; the arm64 root is cached in
#                                             ${ESTA_ARM64_ROOT:-$HOME/.cache/esta-export/arm64-root})
# The first run takes 10-20 minutes (debootstrap's second stage runs emulated); later runs reuse the root.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/aarch64}
ROOT=${ESTA_ARM64_ROOT:-"$HOME/.cache/esta-export/arm64-root"}
MIRROR=${ESTA_DEBIAN_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
STITCHES=${ESTA_ARM64_STITCHES:-0-5}
PY=${PYTHON:-python}

[ "$(id -u)" = 0 ] || { echo "check_aarch64: needs root (debootstrap, chroot, binfmt_misc)" >&2; exit 2; }
command -v esta-export >/dev/null || { echo "check_aarch64: run inside the project's environment (scripts/setup.sh)" >&2; exit 2; }
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap >/dev/null
fi
# Register the aarch64 handler (its F flag keeps it working inside the chroot).
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
fi

if [ ! -f "$ROOT/.esta-complete" ]; then
  echo "== debootstrap arm64 bookworm into $ROOT (first run only)"
  rm -rf "$ROOT"; mkdir -p "$ROOT"
  debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv bookworm "$ROOT" "$MIRROR" >/dev/null
  chroot "$ROOT" /debootstrap/debootstrap --second-stage >/dev/null
  touch "$ROOT/.esta-complete"
fi

# aarch64 wheels, fetched on the host (pip inside the chroot cannot verify this network's TLS).
if [ ! -x "$ROOT/venv/bin/python" ]; then
  echo "== aarch64 venv with numpy + onnxruntime only"
  rm -rf "$ROOT/wh"; mkdir -p "$ROOT/wh"
  pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform any \
    -d "$ROOT/wh" numpy onnxruntime flatbuffers packaging protobuf coloredlogs humanfriendly sympy mpmath
  chroot "$ROOT" /usr/bin/python3 -m venv /venv
  chroot "$ROOT" /venv/bin/pip install -q --no-index --find-links /wh numpy onnxruntime
fi

# An aarch64 /proc/cpuinfo (ONNX Runtime's cpuinfo crashes on the host's x86 one): four Cortex-A76.
CPUINFO="$ROOT/.cpuinfo-a76"
: > "$CPUINFO"
for i in 0 1 2 3; do
  printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$i" >> "$CPUINFO"
done

# ...and the CPU lists it reads from /sys (the host's /sys is never mounted into the root).
mkdir -p "$ROOT/sys/devices/system/cpu"
echo 0-3 > "$ROOT/sys/devices/system/cpu/possible"; echo 0-3 > "$ROOT/sys/devices/system/cpu/present"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cleanup() { umount "$ROOT/proc/cpuinfo" 2>/dev/null || true; umount "$ROOT/proc" 2>/dev/null || true; }
trap cleanup EXIT
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mount --bind "$CPUINFO" "$ROOT/proc/cpuinfo"

status=0
for target in raspberry-pi-5 cpu-int8; do
  echo "== $target: main job on the host (stitches $STITCHES; its host latency is a stand-in, not the Pi's)"
  esta-export examples/demo/digits-esta.safetensors --target "$target" --out "$OUT/$target" \
      --stitches "$STITCHES" --fresh >"$OUT/$target.log" 2>&1 || { tail -5 "$OUT/$target.log"; exit 1; }
  rm -rf "$ROOT/check"; mkdir -p "$ROOT/check"
  cp -r "$OUT/$target/bundle/$target" "$ROOT/check/bundle"
  cp scripts/aarch64_logits.py "$ROOT/check/"
  echo "== $target: logits on the host (x86-64) and under qemu-aarch64 (Cortex-A76)"
  $PY scripts/aarch64_logits.py "$ROOT/check/bundle" "$ROOT/check/host.npz"
  QEMU_CPU=cortex-a76 chroot "$ROOT" /venv/bin/python /check/aarch64_logits.py /check/bundle /check/arm64.npz
  $PY scripts/aarch64_logits.py --compare "$ROOT/check/host.npz" "$ROOT/check/arm64.npz" \
      --bundle "$ROOT/check/bundle" --result "$OUT/$target/aarch64-check.json" || status=1
done
exit $status
