#!/usr/bin/env bash
# Build the offline bundle that benchmarks/gpu_check.sh unpacks on a GPU machine that has torch, torchvision,
# pyarrow, pandas, pillow and numpy but no Ray (and no network). The bundle is ONE folder, carried as is:
#
#   bash benchmarks/gpu_bundle.sh                         # cp312 -> .gpu-bundle/        (what the GPU machine runs)
#   bash benchmarks/gpu_bundle.sh --python-version 3.11   # cp311 -> .gpu-bundle-cp311/  (dry run on this machine)
#   options: --out DIR  --limit-mib 60  --wheels DIR (reuse downloaded wheels)  --full-botocore  --xz-level 6
#
# What it does:
# 1. pip download --no-deps --only-binary=:all: of ray and every package that `import ray`, `import ray.data` and
#    our pipeline (screening.pipeline / .io / .store with s3fs) need, for the target CPython on manylinux x86_64,
#    pinned to constraints.txt. The base set the GPU image has {torch, torchvision, numpy, pandas, pyarrow, pillow}
#    is NOT bundled.
# 2. checks the closure: every Requires-Dist of every bundled wheel (markers evaluated for the target Python on
#    Linux x86_64; ray with its "data" extra) is bundled or in the base set, at a version that satisfies it;
# 3. unpacks the wheels into one site tree, removes ray's jars, dashboard client build, serve, rllib, tune and train
#    (not imported by ray.data or by us) and botocore's service models other than s3 / sts / sso / sso-oidc
#    (--full-botocore keeps them all), and packs the tree as site.tar.xz;
# 4. writes manifest.json (python tag, distributions + versions, what was stripped, sizes, sha256), prints the
#    total size and FAILS when the folder is over --limit-mib (default 60 MiB: the device tool carries 64 MiB,
#    the checkout travels too).
# Unpack: tar -xJf site.tar.xz -C SITE; PYTHONPATH=SITE (gpu_check.sh does this).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

PYVER=3.12
OUTDIR=
LIMIT_MIB=60
WHEELS=
FULL_BOTOCORE=0
XZ_LEVEL=6
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYVER=$2; shift 2 ;;
    --out) OUTDIR=$2; shift 2 ;;
    --limit-mib) LIMIT_MIB=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --full-botocore) FULL_BOTOCORE=1; shift ;;
    --xz-level) XZ_LEVEL=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_bundle.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$PYVER" in 3.1[0-9]) ;; *) echo "gpu_bundle.sh: --python-version must look like 3.12" >&2; exit 2 ;; esac
TAG=cp${PYVER/./}
if [ -z "$OUTDIR" ]; then
  if [ "$PYVER" = 3.12 ]; then OUTDIR=.gpu-bundle; else OUTDIR=.gpu-bundle-$TAG; fi
fi
HOSTPY=${HOSTPY:-python3}
[ -x "$REPO/.venv/bin/python" ] && HOSTPY=$REPO/.venv/bin/python

# The closure (ray 2.60 base requirements + ray[data]'s fsspec + what screening imports on the pipeline path),
# minus the base set. Checked in step 2, so a missing one fails the build rather than the GPU run.
PACKAGES=(
  ray
  # ray's own requirements
  click filelock jsonschema jsonschema-specifications referencing rpds-py attrs typing-extensions
  msgpack packaging protobuf pyyaml requests charset-normalizer idna urllib3 certifi
  # ray[data] (numpy, pandas, pyarrow are the base set)
  fsspec
  # screening: s3fs stores/outputs, botocore credential look-up, tqdm progress
  s3fs aiobotocore botocore jmespath python-dateutil six aioitertools wrapt
  aiohttp aiohappyeyeballs aiosignal frozenlist multidict propcache yarl
  tqdm
  # gpu_check.sh runs the tests marked gpu (pytest -m gpu; pyproject's addopts need pytest-timeout)
  pytest pluggy iniconfig pygments pytest-timeout
)
BASE_SET="torch torchvision numpy pandas pyarrow pillow"
# ray folders that neither `import ray.data` nor our pipeline import
RAY_STRIP=(ray/jars ray/dashboard/client/build ray/serve ray/rllib ray/tune ray/train)
BOTOCORE_KEEP=(s3 sts sso sso-oidc)

pin() {  # name -> name==version from constraints.txt (names compared PEP 503-normalised)
  local n v
  n=$(echo "$1" | tr 'A-Z_.' 'a-z--')
  v=$(awk -F'==' -v n="$n" '!/^#/ && NF==2 { k=tolower($1); gsub(/[_.]/,"-",k); if (k==n) print $2 }' constraints.txt)
  if [ -n "$v" ]; then echo "$1==$v"; else echo "gpu_bundle.sh: WARNING: $1 is not pinned in constraints.txt" >&2; echo "$1"; fi
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bundle.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if [ -z "$WHEELS" ]; then WHEELS=$WORK/wheels; fi
mkdir -p "$WHEELS"
REQS=()
for p in "${PACKAGES[@]}"; do REQS+=("$(pin "$p")"); done
echo "== 1. download (CPython $PYVER, manylinux x86_64, --no-deps) into $WHEELS"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux_2_5_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done
"$HOSTPY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${PLATFORMS[@]}" -d "$WHEELS" "${REQS[@]}" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
for r in "${REQS[@]}"; do   # pip's exit status is hidden by the filter above: check each wheel is there
  n=$(echo "${r%%==*}" | tr 'A-Z-.' 'a-z__'); v=${r#*==}; [ "$v" = "$r" ] && v=
  compgen -G "$WHEELS/${n}-${v}*.whl" >/dev/null || { echo "gpu_bundle.sh: no wheel for $r in $WHEELS" >&2; exit 1; }
done

echo "== 2. closure check"
"$HOSTPY" - "$WHEELS" "$PYVER" "$BASE_SET" "${REQS[@]}" <<'EOF'
import glob, os, re, sys, zipfile
wheels, pyver, base = sys.argv[1], sys.argv[2], set(sys.argv[3].split())
wanted = {re.sub(r"[-_.]+", "-", r.split("==")[0]).lower() for r in sys.argv[4:]}
files = sorted(glob.glob(os.path.join(wheels, "*.whl")))
sys.path.insert(0, next(f for f in files if os.path.basename(f).startswith("packaging-")))  # a wheel is a zip import
from packaging.markers import Marker  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name, parse_wheel_filename  # noqa: E402
have, meta = {}, {}
for f in files:
    name, version, _, tags = parse_wheel_filename(os.path.basename(f))
    name = canonicalize_name(name)
    if name not in wanted:
        continue  # a stale wheel in a reused --wheels folder
    if name in have:
        sys.exit(f"two versions of {name} in {wheels}: {have[name]} and {version}")
    have[name] = version
    with zipfile.ZipFile(f) as z:
        meta[name] = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
env = {"python_version": pyver, "python_full_version": pyver + ".0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix"}
missing = []
for name, text in meta.items():
    extras = [""] + (["data"] if name == "ray" else [])
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in extras):
            continue
        dep = canonicalize_name(req.name)
        if dep in base:
            continue
        if dep not in have:
            missing.append(f"{name} needs {req} (not bundled)")
        elif req.specifier and not req.specifier.contains(have[dep], prereleases=True):
            missing.append(f"{name} needs {req}, bundled {dep}=={have[dep]}")
if missing:
    sys.exit("closure check FAILED:\n  " + "\n  ".join(missing))
print(f"closure ok: {len(have)} distributions; base set left to the machine: {' '.join(sorted(base))}")
EOF

echo "== 3. unpack, strip, pack"
SITE=$WORK/site
mkdir -p "$SITE"
"$HOSTPY" - "$WHEELS" "$SITE" "${PACKAGES[@]}" <<'EOF'
import glob, os, re, sys, zipfile
wheels, site = sys.argv[1], sys.argv[2]
names = {re.sub(r"[-_.]+", "-", p).lower() for p in sys.argv[3:]}
for f in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
    if re.sub(r"[-_.]+", "-", os.path.basename(f).split("-")[0]).lower() not in names:
        continue
    with zipfile.ZipFile(f) as z:  # extractall drops mode bits: raylet and gcs_server must stay executable
        for info in z.infolist():
            path = z.extract(info, site)
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                os.chmod(path, mode | 0o600)
EOF
before=$(du -sb "$SITE" | cut -f1)
for d in "${RAY_STRIP[@]}"; do rm -rf "${SITE:?}/$d"; done
if [ "$FULL_BOTOCORE" = 0 ]; then
  for d in "$SITE"/botocore/data/*/; do
    s=$(basename "$d"); k=0; for keep in "${BOTOCORE_KEEP[@]}"; do [ "$s" = "$keep" ] && k=1; done
    [ $k = 1 ] || rm -rf "$d"
  done
fi
find "$SITE" -name __pycache__ -type d -prune -exec rm -rf {} +
after=$(du -sb "$SITE" | cut -f1)
echo "site tree: $((before / 1048576)) MiB unpacked, $((after / 1048576)) MiB after stripping"
rm -rf "$OUTDIR.tmp"
mkdir -p "$OUTDIR.tmp"
tar -C "$SITE" --owner=0 --group=0 --numeric-owner --sort=name -cf - . | xz -"$XZ_LEVEL" -T0 > "$OUTDIR.tmp/site.tar.xz"
# The demo photos (from scikit-image / scikit-learn / matplotlib, absent on the GPU machines) as the JPEG q92 files
# the demo writes: gpu_bench.py and the gpu tests read them through GPU_CHECK_PHOTOS.
"$HOSTPY" - "$OUTDIR.tmp/demo_photos.npz" <<'EOF'
import io, sys
import numpy as np
from PIL import Image
from screening.demo import packaged_photos
jpegs = {}
for name, (img, _) in sorted(packaged_photos().items()):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=92)
    jpegs[name] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
np.savez(sys.argv[1], **jpegs)
print(f"demo_photos.npz: {len(jpegs)} photos, {sum(map(len, jpegs.values())) / 2**20:.1f} MiB")
EOF

echo "== 4. manifest, size"
"$HOSTPY" - "$OUTDIR.tmp" "$PYVER" "$WHEELS" "$after" "$FULL_BOTOCORE" "${RAY_STRIP[*]}" "${BOTOCORE_KEEP[*]}" "$BASE_SET" "${PACKAGES[@]}" <<'EOF'
import glob, hashlib, json, os, re, sys, time
out, pyver, wheels, unpacked, full_boto, ray_strip, boto_keep, base = sys.argv[1:9]
names = {re.sub(r"[-_.]+", "-", p).lower() for p in sys.argv[9:]}
dists = {}
for f in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
    n, v = os.path.basename(f).split("-")[:2]
    if re.sub(r"[-_.]+", "-", n).lower() in names:
        dists[n] = {"version": v, "wheel": os.path.basename(f), "wheel_bytes": os.path.getsize(f)}
tar = os.path.join(out, "site.tar.xz")
h = hashlib.sha256()
with open(tar, "rb") as fh:
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
m = {"python_version": pyver, "python_tag": "cp" + pyver.replace(".", ""), "platform": "manylinux x86_64",
     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "archive": "site.tar.xz",
     "archive_bytes": os.path.getsize(tar), "archive_sha256": h.hexdigest(), "unpacked_bytes": int(unpacked),
     "stripped": ray_strip.split() + ([] if full_boto == "1" else
                                       [f"botocore/data/* except {' '.join(boto_keep.split())}"]),
     "base_set_not_bundled": base.split(), "distributions": dists,
     "wheels_bytes": sum(d["wheel_bytes"] for d in dists.values())}
json.dump(m, open(os.path.join(out, "manifest.json"), "w"), indent=1)
print(f"{len(dists)} distributions; their wheels: {m['wheels_bytes'] / 2**20:.1f} MiB; "
      f"site.tar.xz: {m['archive_bytes'] / 2**20:.1f} MiB ({m['archive_bytes']} bytes)")
EOF
rm -rf "$OUTDIR"
mv "$OUTDIR.tmp" "$OUTDIR"
total=$(du -sb "$OUTDIR" | cut -f1)
limit=$((LIMIT_MIB * 1048576))
printf 'bundle %s: %s bytes = %s MiB (limit %s MiB)\n' "$OUTDIR" "$total" \
  "$(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }')" "$LIMIT_MIB"
if [ "$total" -gt "$limit" ]; then
  echo "gpu_bundle.sh: FAILED: the bundle is over $LIMIT_MIB MiB" >&2
  exit 1
fi
