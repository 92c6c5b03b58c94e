#!/usr/bin/python3
"""Write a container image as a docker-archive (what `podman load -i FILE` reads), no podman needed.

    mmdebstrap --format=tar ... SUITE - MIRROR | \
        python3 scripts/image-archive.py --tag localhost/liminati-test/nginx:1 \
            --config '{"Entrypoint": ["nginx"]}' --add /some/dir --add /host/dir:/image/dir \
            --out nginx.tar

Layer 1 is the tar read from stdin (a root filesystem, e.g. mmdebstrap's output). With --add,
layer 2 holds those host paths (files keep their mode; owner root), each at its own path in the
image or at the path after the colon, with its parent directories (0755, root). Everything is
streamed straight into the archive, hashed on the way (each member's header is written last,
once its size and digest are known): a multi-GB layer is written once.

The archive: `<sha256>.tar` per layer (uncompressed, as `podman load` takes it fastest),
`<sha256>.json` (the image config: --config is its "config" object, plus the layers' diff_ids),
and manifest.json naming the tag. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

BLOCK = 512
CHUNK = 1 << 20
#: a fixed time for every member we make ourselves, so the same inputs give the same archive
EPOCH = 0


class _Counted(io.RawIOBase):
    """A write-only stream into `out` that hashes and counts what passes through."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.out.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = EPOCH
    buf = info.tobuf(format=tarfile.USTAR_FORMAT)
    assert len(buf) == BLOCK, name
    return buf


def _pad(out: BinaryIO, size: int) -> None:
    if size % BLOCK:
        out.write(b"\0" * (BLOCK - size % BLOCK))


def _streamed_member(out: BinaryIO, fill: object) -> tuple[str, int]:
    """A member whose content `fill(stream)` writes; named <sha256>.tar after the fact."""
    start = out.tell()
    out.write(b"\0" * BLOCK)  # the header, once the size and digest are known
    counted = _Counted(out)
    fill(counted)  # type: ignore[operator]
    _pad(out, counted.size)
    end = out.tell()
    digest = counted.sha.hexdigest()
    out.seek(start)
    out.write(_header(f"{digest}.tar", counted.size))
    out.seek(end)
    return digest, counted.size


def _small_member(out: BinaryIO, name: str, data: bytes) -> None:
    out.write(_header(name, len(data)))
    out.write(data)
    _pad(out, len(data))


def _copy_stdin(stream: _Counted) -> None:
    src = sys.stdin.buffer
    while chunk := src.read(CHUNK):
        stream.write(chunk)


def _parents(path: PurePosixPath) -> list[PurePosixPath]:
    return [p for p in reversed(path.parents) if str(p) not in ("/", ".")]


def _add_layer(adds: list[tuple[Path, PurePosixPath]]) -> object:
    def fill(stream: _Counted) -> None:
        def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info

        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            made: set[str] = set()
            for src, dst in adds:
                for parent in _parents(dst):
                    rel = str(parent).lstrip("/")
                    if rel in made:
                        continue
                    made.add(rel)
                    info = tarfile.TarInfo(rel)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    info.mtime = EPOCH
                    tar.addfile(info)
                tar.add(str(src), arcname=str(dst).lstrip("/"), filter=owned_by_root)

    return fill


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tag", required=True, help="e.g. localhost/liminati-test/nginx:1")
    ap.add_argument("--config", default="{}", help="the image config's `config` object (JSON)")
    ap.add_argument("--created-by", default="mmdebstrap", help="history note for layer 1")
    ap.add_argument("--add", action="append", default=[], metavar="HOST[:IMAGE]")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()

    config = json.loads(args.config)
    adds: list[tuple[Path, PurePosixPath]] = []
    for spec in args.add:
        host, _, inside = spec.partition(":")
        src = Path(host)
        if not src.exists():
            ap.error(f"--add {spec}: {src} does not exist")
        adds.append((src, PurePosixPath(inside or host)))

    tmp = args.out.with_name(args.out.name + f".tmp{os.getpid()}")
    try:
        with tmp.open("wb") as out:
            layers = [_streamed_member(out, _copy_stdin)]
            history = [{"created": "1970-01-01T00:00:00Z", "created_by": args.created_by}]
            if adds:
                layers.append(_streamed_member(out, _add_layer(adds)))
                history.append(
                    {
                        "created": "1970-01-01T00:00:00Z",
                        "created_by": "add " + " ".join(str(d) for _, d in adds),
                    }
                )
            if layers[0][1] == 0:
                raise SystemExit("image-archive: no root filesystem tar on stdin")
            image = {
                "architecture": "amd64",
                "os": "linux",
                "created": "1970-01-01T00:00:00Z",
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d, _ in layers]},
                "history": history,
            }
            blob = json.dumps(image, sort_keys=True, separators=(",", ":")).encode()
            config_name = f"{hashlib.sha256(blob).hexdigest()}.json"
            _small_member(out, config_name, blob)
            manifest = [
                {
                    "Config": config_name,
                    "RepoTags": [args.tag],
                    "Layers": [f"{d}.tar" for d, _ in layers],
                }
            ]
            _small_member(out, "manifest.json", json.dumps(manifest, indent=1).encode())
            out.write(b"\0" * (2 * BLOCK))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # noqa: TID251 (a test tool, not liminati)
        tmp.rename(args.out)
    finally:
        tmp.unlink(missing_ok=True)
    for digest, size in layers:
        print(f"layer sha256:{digest} {size / 2**20:.0f} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
