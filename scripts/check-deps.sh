#!/usr/bin/env bash
# Checks that a fresh Debian 12 machine gets, from `make deps`, everything the
# build needs: every system header a translation unit in bpf/ cmd/ pkg/ tests/
# includes (as the compiler resolves it, gcc -M / clang -M) and every library
# the programs, tests and fuzz targets link (-l flags, sanitizer runtimes)
# must belong to a Debian package that scripts/deps.sh installs or that the
# base image below already has. Run by `make test` after the build (BPF
# translation units need the generated vmlinux.h and skeletons).
#
# Environment (make passes them): CC, CLANG, CFLAGS (the build's, without
# sanitizer flags), LDLIBS, BUILD.
set -uo pipefail
cd "$(dirname "$0")/.."

CC=${CC:-cc}
CLANG=${CLANG:-clang}
BUILD=${BUILD:-build}
CFLAGS=${CFLAGS:--std=gnu11 -D_GNU_SOURCE -DH2O_USE_LIBUV=0 -Ipkg -Icmd -Itests/helpers -I$BUILD/gen -I$BUILD/bpf -Ibpf -pthread}
LDLIBS=${LDLIBS:--lcurl -ljansson -lh2o-evloop -lssl -lcrypto -lnats -lprotobuf-c -lyaml -lbpf -lelf -lz -lm}

# What a fresh Debian 12 image with gcc and make has before `make deps`:
# the C library and kernel headers (libc6-dev, linux-libc-dev, libcrypt-dev
# are hard dependencies of gcc's libc6-dev), and gcc's own headers and
# runtime link files (libgcc-12-dev, a dependency of gcc-12).
base=(libc6 libc6-dev linux-libc-dev libcrypt-dev gcc gcc-12 cpp-12 libgcc-12-dev make)
# Installed with a package deps.sh lists, as its hard dependency: clang's own
# headers (stddef.h, stdarg.h for the BPF objects) come with clang-14.
with_listed=(libclang-common-14-dev)

mapfile -t listed < <(scripts/deps.sh --list)
declare -A allowed=()
for p in "${base[@]}" "${with_listed[@]}" "${listed[@]}"; do allowed[$p]=1; done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# path<TAB>who-needs-it, one per line
need=$work/need
: >"$need"

# Absolute paths among each translation unit's `-M` prerequisites: the system
# headers, as "path<TAB>file" lines. Files run in parallel, one output each.
scan() { # compiler-and-flags... -- files...
  local cmd=()
  while [ "$1" != -- ]; do
    cmd+=("$1")
    shift
  done
  shift
  printf '%s\n' "$@" | xargs -d '\n' -P "$(nproc)" -I{} sh -c '
    f=$1; shift
    out=$(echo "$f" | tr / _)
    if "$@" -M "$f" >"$W/$out.m" 2>"$W/$out.err"; then
      tr " \\\\" "\n\n" <"$W/$out.m" | grep "^/" | sort -u | sed "s|\$|\t$f|" >"$W/$out.need"
    else
      echo "check-deps: cannot preprocess $f:" >&2; cat "$W/$out.err" >&2; exit 1
    fi' _ {} "${cmd[@]}"
}
export W=$work

status=0
arch=$(uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
scan "$CLANG" -target bpf -D__TARGET_ARCH_"$arch" -I"$BUILD/bpf" -Ibpf -- bpf/*.bpf.c || status=1
mapfile -t srcs < <(find cmd pkg tests -name '*.c' -not -path 'tests/fuzz/*' -not -path '*/node_modules/*' | sort)
# shellcheck disable=SC2086 # CFLAGS is a list of flags
scan "$CC" $CFLAGS -- "${srcs[@]}" || status=1
# Fuzz targets build with clang.
mapfile -t fuzz < <(find tests/fuzz -name '*.c' 2>/dev/null | sort)
if [ ${#fuzz[@]} -ne 0 ]; then
  # shellcheck disable=SC2086
  scan "$CLANG" $CFLAGS -- "${fuzz[@]}" || status=1
fi
cat "$work"/*.need >"$work/raw" 2>/dev/null
paste <(cut -f1 "$work/raw" | xargs -d '\n' realpath -sm) <(cut -f2 "$work/raw") >"$need"

# Libraries, as the linker finds them: the -l link files (the -dev packages).
for l in $LDLIBS -lcriterion; do
  case "$l" in -l*) ;; *) continue ;; esac
  lib=${l#-l}
  path=
  for ext in so a; do
    p=$("$CC" -print-file-name="lib$lib.$ext")
    if [ "$p" != "lib$lib.$ext" ]; then
      path=$(realpath -sm "$p")
      break
    fi
  done
  if [ -z "$path" ]; then
    echo "check-deps: the linker does not find $l (no lib$lib.so or lib$lib.a)" >&2
    status=1
    continue
  fi
  printf '%s\t%s\n' "$path" "link $l" >>"$need"
done
# Sanitizer runtimes: gcc's (make SANITIZE=...), the shared objects the
# link files point at; clang's static ones (make fuzz).
for lib in libasan.so libubsan.so libtsan.so; do
  printf '%s\t%s\n' "$(realpath "$("$CC" -print-file-name="$lib")")" "-fsanitize ($CC)" >>"$need"
done
rtdir=$("$CLANG" --print-runtime-dir 2>/dev/null)
for lib in fuzzer asan ubsan_standalone; do
  printf '%s\t%s\n' "$rtdir/libclang_rt.$lib-$(uname -m).a" "-fsanitize=fuzzer ($CLANG)" >>"$need"
done

# Which package owns each path. dpkg knows /usr/lib paths; with merged /usr a
# compiler may name the same file under /lib.
cut -f1 "$need" | sort -u >"$work/paths"
declare -A owner=()
while IFS= read -r path; do
  for p in "$path" "/usr$path" "${path#/usr}"; do
    if [ -e "$p" ] || [ -L "$p" ]; then
      printf '%s\t%s\n' "$p" "$path"
    fi
  done
done <"$work/paths" >"$work/alias"
# One dpkg call for all paths: "pkg[, pkg]: path" for each it knows.
cut -f1 "$work/alias" | xargs -d '\n' dpkg -S 2>/dev/null | grep -v '^diversion' >"$work/owners"
declare -A owner_of=()
while IFS= read -r line; do
  owner_of[${line#*: }]=${line%%: *}
done <"$work/owners"
while IFS=$'\t' read -r p path; do
  [ -n "${owner_of[$p]:-}" ] && [ -z "${owner[$path]:-}" ] && owner[$path]=${owner_of[$p]}
done <"$work/alias"
while IFS= read -r path; do
  [ -n "${owner[$path]:-}" ] || owner[$path]='?'
done <"$work/paths"

declare -A reported=()
while IFS=$'\t' read -r path who; do
  pkgs=${owner[$path]}
  ok=
  for p in ${pkgs//,/ }; do
    [ -n "${allowed[${p%%:*}]:-}" ] && ok=1
  done
  # One line per missing package, naming the first file that needs it.
  if [ -z "$ok" ] && [ -z "${reported[$pkgs]:-}" ]; then
    reported[$pkgs]=1
    if [ "$pkgs" = "?" ]; then
      echo "check-deps: $path (needed by $who) belongs to no Debian package" >&2
    else
      echo "check-deps: $path (needed by $who) comes from ${pkgs//:amd64/}, which scripts/deps.sh does not install" >&2
    fi
    status=1
  fi
done <"$need"
checked=$(wc -l <"$work/paths")

if [ $status -ne 0 ]; then
  echo "check-deps: FAILED: add the packages above to scripts/deps.sh (or, if a fresh Debian 12 with gcc and make has them, to the base list in scripts/check-deps.sh)" >&2
  exit 1
fi
used=$(printf '%s\n' "${owner[@]}" | tr ',' '\n' | sed 's/^ *//; s/:.*//' | sort -u | tr '\n' ' ')
echo "check-deps: ok ($checked system headers and libraries, from: ${used% })"
