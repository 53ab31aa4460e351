"""The unsynced data of one file: dirty 4 KiB pages over the backing file, until fsync.

Theory of operation. The backing file holds exactly what is durable ("on the disk"); nothing is
written to it except when the file is fsynced (or written back when the cache is full, as a
kernel's writeback would). Every write lands in `pages` (a copy of the page from the backing
file, patched), so reads see it, as they see a page cache. A truncation is pending too: `floor`
is the lowest size the file had since its last sync, and backing bytes at or above it are stale
(read as zeros) until the next sync applies the truncation.

    size  — the length readers see (fstat, EOF);
    floor — Invariant: floor <= backing length and floor <= every size since the last sync;
    pages — page index -> 4096 bytes; dict order is the order pages were first dirtied, which is
            the order a torn power cut keeps a prefix of.

Every method is called with `lock` held (the caller's duty); `dead` marks a file whose state was
applied and dropped, so a thread that found it just before must look again.
"""

from __future__ import annotations

import os
import threading

__all__ = ["PAGE_BYTES", "PendingFile"]

PAGE_BYTES = 4096


class PendingFile:
    def __init__(self, fd: int, ino: int) -> None:
        self.fd = fd  # our own O_RDWR descriptor of the backing inode (survives renames)
        self.ino = ino
        durable = os.fstat(fd).st_size
        self.size = durable
        self.floor = durable
        self.pages: dict[int, bytearray] = {}
        self.lock = threading.Lock()
        self.dead = False

    @property
    def dirty_bytes(self) -> int:
        return len(self.pages) * PAGE_BYTES

    def write(self, offset: int, data: bytes) -> int:
        """Patch the pages `data` covers (loading each from the backing file first). Returns
        how many bytes of new dirty pages this added (for the cache's bound)."""
        added = 0
        pos = 0
        while pos < len(data):
            at = offset + pos
            index, start = divmod(at, PAGE_BYTES)
            take = min(PAGE_BYTES - start, len(data) - pos)
            page = self.pages.get(index)
            if page is None:
                page = self._load(index) if take < PAGE_BYTES else bytearray(PAGE_BYTES)
                self.pages[index] = page
                added += PAGE_BYTES
            page[start:start + take] = data[pos:pos + take]
            pos += take
        self.size = max(self.size, offset + len(data))
        return added

    def truncate(self, length: int) -> int:
        """Pending truncation (or extension with zeros). Returns dirty bytes released."""
        released = 0
        if length < self.size:
            self.floor = min(self.floor, length)
            for index in [i for i in self.pages if i * PAGE_BYTES >= length]:
                del self.pages[index]
                released += PAGE_BYTES
            index, start = divmod(length, PAGE_BYTES)
            if start and index in self.pages:
                self.pages[index][start:] = bytes(PAGE_BYTES - start)
        self.size = length
        return released

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if end <= offset:
            return b""
        out = bytearray()
        at = offset
        while at < end:
            index, start = divmod(at, PAGE_BYTES)
            page = self.pages.get(index)
            if page is not None:
                take = min(PAGE_BYTES - start, end - at)
                out += page[start:start + take]
                at += take
                continue
            run_end = at  # a run of pages not in the cache: one pread
            while run_end < end and (run_end // PAGE_BYTES) not in self.pages:
                run_end = min(end, (run_end // PAGE_BYTES + 1) * PAGE_BYTES)
            out += self._backing(at, run_end - at)
            at = run_end
        return bytes(out)

    def apply(self, pages_max: int | None = None) -> int:
        """Write the pending state to the backing file: the truncation, then the dirty pages in
        first-dirtied order (only the first `pages_max` of them: a torn write). Returns bytes
        written. The caller fsyncs and drops the file if it applied everything."""
        backing_size = os.fstat(self.fd).st_size
        if self.floor < backing_size:
            os.ftruncate(self.fd, self.floor)
            backing_size = self.floor
        written = 0
        order = list(self.pages.items())
        torn = pages_max is not None and pages_max < len(order)
        for index, page in order[:pages_max]:
            start = index * PAGE_BYTES
            if start >= self.size:
                continue
            chunk = page[:min(PAGE_BYTES, self.size - start)]
            os.pwrite(self.fd, chunk, start)
            written += len(chunk)
            backing_size = max(backing_size, start + len(chunk))
        if not torn and backing_size != self.size:
            os.ftruncate(self.fd, self.size)  # an extension past the last page written
        return written

    # --- helpers --------------------------------------------------------------------------------

    def _load(self, index: int) -> bytearray:
        page = bytearray(self._backing(index * PAGE_BYTES, PAGE_BYTES))
        page.extend(bytes(PAGE_BYTES - len(page)))
        return page

    def _backing(self, offset: int, size: int) -> bytes:
        """Durable bytes, with everything at or above the pending truncation read as zeros."""
        data = os.pread(self.fd, size, offset) if offset < self.floor else b""
        if offset + len(data) > self.floor:
            data = data[:max(0, self.floor - offset)]
        if len(data) < size:  # past the durable end (or truncated): zeros up to `size`
            data += bytes(min(size, max(0, self.size - offset)) - len(data))
        return data
