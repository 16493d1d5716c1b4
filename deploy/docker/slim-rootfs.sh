#!/bin/sh
# Slim the runtime root filesystem: the Dockerfile's `rootfs` stage runs this as root,
# after the venv and the project are in place and before the stage is flattened into the
# image. It removes what the base image holds only for building (binutils, pip and venv
# wheels, lib2to3, distutils) and what a product never uses (iconv modules, perl, apt),
# keeping dpkg's status file true for the packages that stay (image scanners read it).
# nginx stays: the mesh's gateway container runs it from this image.
set -eu

# Build-only packages: dpkg refuses when something that stays depends on them.
dpkg --purge \
    binutils binutils-common binutils-x86-64-linux-gnu libbinutils libctf0 libctf-nobfd0 \
    libgprofng0 libjansson4 \
    python3-venv python3.11-venv python3-pip-whl python3-setuptools-whl \
    python3-distutils python3-lib2to3
# Disk and mount tools (a container has none to manage), iproute2 (nginx depends on it,
# runs without it), bash (/bin/sh is dash), user management (the user exists already),
# logins and PAM (nothing authenticates inside), bsdutils (logger, script: the last user
# of libsystemd and libgcrypt), Berkeley DB (only Python's dbm.ndbm links it);
# then package management: nothing is installed into a running product. Some are
# essential to Debian, hence the force; debconf goes with perl, last, as the others'
# removal scripts use it. Then what only apt used (TLS, its sandbox).
dpkg --purge --force-remove-essential --force-depends \
    util-linux util-linux-extra mount e2fsprogs libext2fs2 libss2 logsave \
    iproute2 libbpf1 libelf1 libmnl0 libxtables12 libcap2-bin \
    bash passwd libsemanage2 libsemanage-common libsepol2 \
    login libpam-runtime libpam-modules libpam-modules-bin libpam0g \
    libaudit1 libaudit-common libcap-ng0 \
    bsdutils libsystemd0 libgcrypt20 libgpg-error0 liblz4-1 libdb5.3
dpkg --purge --force-remove-essential --force-depends \
    apt libapt-pkg6.0 gpgv debian-archive-keyring debconf perl-base
dpkg --purge libgnutls30 libp11-kit0 libtasn1-6 libidn2-0 libunistring2 libhogweed6 \
    libnettle8 libseccomp2 libxxhash0
rm -rf /var/lib/apt /var/cache/apt /var/cache/debconf /etc/apt \
    /var/lib/dpkg/info/*.symbols /var/lib/dpkg/info/*.templates

# iconv's charset modules (Python has its own codecs; nginx does not use them), the
# documentation and tests of the Python standard library (with dbm.ndbm, whose library
# went above), and caches.
dynload=/usr/lib/python3.11/lib-dynload
rm -rf /usr/lib/x86_64-linux-gnu/gconv /usr/lib/python3.11/pydoc_data \
    /usr/lib/python3.11/test "$dynload"/_test*.so "$dynload"/_ctypes_test.*.so \
    "$dynload"/_xxtestfuzz.*.so "$dynload"/xxlimited*.so "$dynload"/_dbm.*.so \
    /var/log/* /var/cache/ldconfig/* /root/.cache /tmp/* /var/tmp/*

# Whatever stays must still find its shared libraries (a purge above may have taken one).
missing=$(find /usr /opt -xdev -type f \( -perm -u+x -o -name '*.so*' \) | while read -r file; do
    /lib64/ld-linux-x86-64.so.2 --verify "$file" >/dev/null 2>&1 || continue
    /lib64/ld-linux-x86-64.so.2 --list "$file" 2>&1 >/dev/null || true
done)
[ -z "$missing" ] || { printf 'slim-rootfs: missing libraries:\n%s\n' "$missing" >&2; exit 1; }
