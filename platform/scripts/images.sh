#!/usr/bin/env bash
# Build the keel images (platform/Dockerfile, targets `platform` and `serving`) with buildah, no
# Docker engine, then smoke-test them.
#
# Needs: root, and `apt-get install buildah debootstrap` (Debian 12). Storage is vfs with chroot
# isolation, so it needs no overlayfs, user namespaces or container daemon.
#
# Why a local base image: the Dockerfile's default base (python:3.11.7-slim-bookworm) comes from
# Docker Hub, which a host that reaches only Debian's mirror and PyPI cannot pull. Instead this
# bootstraps bookworm (minbase, python3 3.11) with debootstrap and shapes it like the official
# image: /usr/local/bin/python3.11 and pip, no EXTERNALLY-MANAGED marker. It is built once and
# reused (delete localhost/keel-base:bookworm to rebuild it). The Dockerfile is used unchanged.
#
# Environment:
#   KEEL_IMAGE_STORE    buildah storage (default /var/tmp/keel-images; kept out of the repository)
#   KEEL_IMAGE_TAG      tag of both images (default dev)
#   KEEL_DEBIAN_MIRROR  mirror for debootstrap (default http://deb.debian.org/debian)
#   KEEL_DEBIAN_SECURITY  security mirror (default http://deb.debian.org/debian-security)
#   KEEL_BUILD_CA_BUNDLE  host CA bundle bind-mounted over the image's during RUN steps only, so a
#                       TLS-intercepting proxy trusted by the host also works for pip/uv (default
#                       /etc/ssl/certs/ca-certificates.crt; empty to disable). Not baked in.
set -euo pipefail

STORE=${KEEL_IMAGE_STORE:-/var/tmp/keel-images}
TAG=${KEEL_IMAGE_TAG:-dev}
MIRROR=${KEEL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${KEEL_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
CA_BUNDLE=${KEEL_BUILD_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
BASE=localhost/keel-base:bookworm
B=(buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver vfs)
LOW=(nice -n 19 ionice -c3)          # heavy steps yield to anything else on the host
export BUILDAH_ISOLATION=chroot

[[ $EUID -eq 0 ]] || { echo "images.sh: run as root (buildah vfs + debootstrap)" >&2; exit 1; }
for c in buildah debootstrap; do
  command -v "$c" >/dev/null || { echo "images.sh: missing $c (apt-get install buildah debootstrap)" >&2; exit 1; }
done
cd "$(dirname "${BASH_SOURCE[0]}")/../.."   # repository root: the build context
mkdir -p "$STORE"

CREATED=()
cleanup() { for c in "${CREATED[@]}"; do "${B[@]}" rm "$c" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT
new_ctr() {   # sets CTR; the container is removed on exit unless committed
  "${B[@]}" rm "$1" >/dev/null 2>&1 || true
  CTR=$("${B[@]}" from --name "$1" "$2"); CREATED+=("$CTR")
}

# 1. base image: debootstrap straight into a scratch container's root
if "${B[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
  echo "== base $BASE exists, skipping debootstrap"
else
  echo "== bootstrapping $BASE from $MIRROR"
  new_ctr keel-base-work scratch; ctr=$CTR
  mnt=$("${B[@]}" mount "$ctr")
  "${LOW[@]}" debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,netbase,tzdata \
    bookworm "$mnt" "$MIRROR"
  cat >"$mnt/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
  "${B[@]}" run "$ctr" -- sh -c 'apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -qy upgrade'
  rm -f "$mnt"/usr/lib/python3.*/EXTERNALLY-MANAGED   # the official image's pip installs freely
  for n in python3.11 python3 python; do ln -sf /usr/bin/python3.11 "$mnt/usr/local/bin/$n"; done
  ln -sf /usr/bin/pip3 "$mnt/usr/local/bin/pip"
  rm -rf "$mnt"/var/cache/apt/archives/*.deb "$mnt"/var/cache/apt/*.bin "$mnt"/var/lib/apt/lists/* \
         "$mnt"/usr/share/{doc,man,locale}/* "$mnt"/var/log/*.log "$mnt"/tmp/* "$mnt"/etc/hostname
  # SSL_CERT_FILE: uv otherwise trusts only its bundled roots, not the system store.
  "${B[@]}" config --env LANG=C.UTF-8 \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt --cmd python3 "$ctr"
  "${B[@]}" umount "$ctr" >/dev/null
  "${LOW[@]}" "${B[@]}" commit --rm "$ctr" "$BASE"
  CREATED=()
fi

# 2. both targets, Dockerfile unchanged
mounts=()
[[ -n $CA_BUNDLE && -f $CA_BUNDLE ]] && mounts=(-v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
for target in platform serving; do
  echo "== building keel-$target:$TAG"
  start=$SECONDS
  "${LOW[@]}" "${B[@]}" bud --isolation chroot --build-arg PYTHON_IMAGE="$BASE" "${mounts[@]}" \
    -f platform/Dockerfile --target "$target" -t "keel-$target:$TAG" .
  echo "== keel-$target:$TAG built in $((SECONDS - start))s"
done
"${B[@]}" rmi --prune >/dev/null 2>&1 || true   # images a rebuild left untagged

# 3. smoke test: each image's own ENTRYPOINT + CMD, as its configured user
fmt='{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}{{range .OCIv1.Config.Cmd}}{{.}} {{end}}'
for target in platform serving; do
  img="keel-$target:$TAG"
  new_ctr "keel-smoke-$target" "$img"; ctr=$CTR
  read -ra cmd <<<"$("${B[@]}" inspect --type image --format "$fmt" "$img")"
  echo "== $img: ${cmd[*]}"
  out=$("${B[@]}" run "$ctr" -- "${cmd[@]}")
  sed -n '1,5s/^/   /p' <<<"$out"
  uid=$("${B[@]}" run "$ctr" -- id -u)
  [[ $uid == 10001 ]] || { echo "images.sh: $img runs as uid $uid, expected 10001" >&2; exit 1; }
  echo "   runs as uid $uid"
done
# the serving stack's imports, every flavor keel serves natively included: a failure fails the build
"${B[@]}" run "$ctr" -- python -W ignore -c '
import importlib
for m in ("kserve", "ray.serve", "mlflow", "feast", "pyarrow", "sklearn", "xgboost", "lightgbm", "evidently"):
    importlib.import_module(m)
print("   imports: kserve, ray.serve, mlflow, feast, pyarrow, sklearn, xgboost, lightgbm, evidently")
' 2>/dev/null || { echo "images.sh: the serving image cannot import its stack (rerun without 2>/dev/null)" >&2; exit 1; }

echo "== images in $STORE"
"${B[@]}" images
