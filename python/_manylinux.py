"""The manylinux platform tag a shared library qualifies for (build time only).

The tag comes from the library's glibc symbol versions (its ELF version-needs
section): a library that needs GLIBC_2.34 at most runs on every glibc >= 2.34,
so its wheel is manylinux_2_34_<arch> (PEP 600). `make wheel` cross-checks the
result with `auditwheel show`. Pure Python, so `pip wheel .` needs no tools.
"""

import struct

SHT_GNU_VERNEED = 0x6FFFFFFE
# e_machine -> the architecture as wheel tags spell it (little-endian ones
# for ppc64: manylinux has no big-endian ppc64 policy).
ARCH = {62: "x86_64", 183: "aarch64", 21: "ppc64le", 22: "s390x", 3: "i686"}
# The oldest manylinux policy of each architecture (PEP 600's, as auditwheel
# lists them): a library needing less is still tagged with it.
FLOOR = {"x86_64": (2, 5), "i686": (2, 5)}
OTHER_FLOOR = (2, 17)


def _unpack(fmt, data, off):
    return struct.unpack_from(fmt, data, off)


def glibc_needs(path):
    """(arch, [(major, minor), ...] of the GLIBC_x.y versions the library needs)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF":
        raise ValueError(f"{path}: not an ELF file")
    is64 = data[4] == 2
    e = "<" if data[5] == 1 else ">"
    machine = _unpack(e + "H", data, 18)[0]
    if is64:
        shoff, = _unpack(e + "Q", data, 0x28)
        shentsize, shnum = _unpack(e + "HH", data, 0x3A)
        sh = e + "IIQQQQIIQQ"
    else:
        shoff, = _unpack(e + "I", data, 0x20)
        shentsize, shnum = _unpack(e + "HH", data, 0x2E)
        sh = e + "IIIIIIIIII"
    sections = [_unpack(sh, data, shoff + i * shentsize) for i in range(shnum)]
    versions = []
    for s in sections:
        if s[1] != SHT_GNU_VERNEED:
            continue
        offset, link, count = s[4], s[6], s[7]  # sh_offset, sh_link, sh_info (entries)
        strtab = sections[link][4]

        def name(o):
            end = data.index(b"\0", strtab + o)
            return data[strtab + o:end].decode()

        vn = offset
        for _ in range(count):
            _ver, cnt, _file, aux, nxt = _unpack(e + "HHIII", data, vn)
            va = vn + aux
            for _ in range(cnt):
                _hash, _flags, _other, vname, vnext = _unpack(e + "IHHII", data, va)
                v = name(vname)
                if v.startswith("GLIBC_") and v[6:7].isdigit():
                    parts = v[6:].split(".")
                    versions.append((int(parts[0]), int(parts[1]) if len(parts) > 1 else 0))
                va += vnext
            if not nxt:
                break
            vn += nxt
    arch = ARCH.get(machine)
    if arch == "ppc64le" and e == ">":
        arch = None
    return arch, versions


def platform_tag(path):
    """manylinux_X_Y_<arch> for the library, or None when it is not a glibc
    library of a manylinux architecture (the caller keeps the linux_* tag)."""
    arch, versions = glibc_needs(path)
    if arch is None or not versions:
        return None
    major, minor = max(versions + [FLOOR.get(arch, OTHER_FLOOR)])
    return f"manylinux_{major}_{minor}_{arch}"


if __name__ == "__main__":
    import sys

    for p in sys.argv[1:]:
        print(p, platform_tag(p), sorted(set(glibc_needs(p)[1]))[-3:])
