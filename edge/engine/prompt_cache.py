"""KV states of earlier prompts, kept beyond the slots: in host memory, and on disk across restarts.

A slot's KV cache holds one token sequence; a kiosk that switches between system prompts would
evaluate each one again on every switch. The scheduler copies a sequence's state out of llama.cpp
(`llama_state_seq_get_data`) when it is worth keeping, and a later request whose prompt shares a
longer prefix with a kept entry than with any slot gets that state copied back into its slot
(`llama_state_seq_set_data`), so only the rest of the prompt is evaluated.

- Entries are keyed by their tokens; a lookup returns the entry sharing the longest prefix with
  the prompt. An entry that would spare fewer than `min_tokens` more than a newer one is dropped
  when the newer one comes: the turns of one conversation keep one entry, not one per turn.
- Memory: the states' bytes stay within `budget_bytes`, least recently used out.
- Disk (`directory`, one folder per model digest): every entry added is also written, atomically,
  by a background thread (the decode thread never waits for the disk), within `disk_budget_bytes`,
  oldest out. At start the headers are read, then (on the same thread, while requests are already
  served) the newest states as far as the memory budget holds them; any other state is read when it
  is first used. A file that does not verify (wrong magic, foreign model, truncated, sha256
  mismatch) is ignored with a warning and removed.

File format (little-endian):
    magic b"EDGEKV1\\n" | u32 header length | header: JSON {"model": digest, "tokens": [...],
    "size": state bytes, "sha256": of the state} | state bytes (llama.cpp's sequence state)
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge.fsio import atomic_file

log = logging.getLogger("edge.engine.prompt_cache")

MAGIC = b"EDGEKV1\n"
MAX_HEADER_BYTES = 8 << 20  # the token list of a 1M-token context as JSON is ~7 MB
MIN_TOKENS = 128  # an entry must spare at least this many prompt tokens to be worth its copy
MAX_DISK_QUEUE = 8  # states waiting to be written; more are dropped (the RAM entry still serves)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Entry:
    tokens: tuple[int, ...]
    size: int  # bytes of the state
    state: bytes | bytearray | None = None  # None: on disk only, not read yet
    file: Path | None = None
    last_used: int = 0
    name: str = field(default="")  # file name stem: sha256 of the tokens


def _mtime(path: Path | None) -> float:
    try:
        return path.stat().st_mtime if path is not None else 0.0
    except OSError:
        return 0.0


def entry_name(tokens: Sequence[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()[:32]


class PromptCache:
    """LRU of sequence states within a byte budget, optionally persisted under `directory`.

    Decode thread only, except the disk writer (its own thread) and `stats()`. `model_digest` is a
    callable so that hashing a large model file happens on the writer thread, after the server
    answers, never on its cold-start path.
    """

    def __init__(
        self,
        budget_bytes: int,
        *,
        directory: Path | None = None,
        model_digest: Callable[[], str] | None = None,
        disk_budget_bytes: int | None = None,
        min_tokens: int = MIN_TOKENS,
    ):
        self.budget = max(0, int(budget_bytes))
        self.min_tokens = min_tokens
        self.entries: dict[str, Entry] = {}
        self._lock = threading.Lock()  # entries: the decode thread and the disk thread's index load
        self._tick = 0
        self.counters = {
            "hits": 0,
            "tokens_restored": 0,
            "saves": 0,
            "evictions": 0,
            "disk_writes": 0,
            "disk_loads": 0,
            "disk_rejected": 0,
        }
        self.disk_budget = self.budget * 4 if disk_budget_bytes is None else max(0, disk_budget_bytes)
        self._root = Path(directory) if directory is not None and self.disk_budget > 0 else None
        self._digest_of = model_digest
        self._dir: Path | None = None  # root / digest, once the digest is known
        self._digest = ""
        self._jobs: queue.Queue = queue.Queue(MAX_DISK_QUEUE)
        self._disk_ready = threading.Event()  # the index of the files on disk is read
        self._preloaded = threading.Event()  # and the states that fit the budget too
        self._writer: threading.Thread | None = None
        if self._root is not None and model_digest is not None:
            self._writer = threading.Thread(target=self._disk_loop, name="edge-prompt-cache", daemon=True)
            self._writer.start()
        else:
            self._disk_ready.set()
            self._preloaded.set()

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    # ---- lookups and updates (decode thread) ------------------------------------------------
    def lookup(self, prompt: Sequence[int]) -> tuple[Entry, int] | None:
        """The entry sharing the longest prefix with `prompt`, and that length (None: nothing shares
        at least `min_tokens`)."""
        best, best_n = None, 0
        with self._lock:
            for e in self.entries.values():
                n = common_prefix(e.tokens, prompt)
                if n > best_n:
                    best, best_n = e, n
        if best is None or best_n < self.min_tokens:
            return None
        return best, best_n

    def covered(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of `tokens` some entry already holds."""
        hit = self.lookup(tokens)
        return hit[1] if hit else 0

    def state_of(self, entry: Entry) -> bytes | bytearray | None:
        """The entry's state, read from disk (and verified) on first use; None if it cannot be had."""
        if entry.state is not None:
            return entry.state
        state = self._read_state(entry)
        with self._lock:
            if state is None:
                self.entries.pop(entry.name, None)
                return None
            entry.state = state
            self._evict_locked(keep=entry.name)
        return state

    def touch(self, entry: Entry, restored: int) -> None:
        self._tick += 1
        entry.last_used = self._tick
        self.counters["hits"] += 1
        self.counters["tokens_restored"] += restored

    def add(self, tokens: Sequence[int], state: bytes | bytearray) -> None:
        """Keep `state` (the KV of exactly `tokens`); drops the entries it nearly covers."""
        if not self.enabled or len(state) > self.budget or len(tokens) < self.min_tokens:
            return
        toks = tuple(tokens)
        self._tick += 1
        entry = Entry(toks, len(state), state, last_used=self._tick, name=entry_name(toks))
        with self._lock:
            for name, e in list(self.entries.items()):
                if len(e.tokens) - common_prefix(e.tokens, toks) < self.min_tokens:
                    del self.entries[name]
                    self._forget_file(e)
            self.entries[entry.name] = entry
            self._evict_locked(keep=entry.name)
        self.counters["saves"] += 1
        if self._root is not None:
            try:
                self._jobs.put_nowait(entry)
            except queue.Full:
                log.warning("prompt cache: the disk writer is behind; this entry stays in memory only")

    def _held_locked(self) -> int:
        """Bytes of the states in memory (the lock held)."""
        return sum(e.size for e in self.entries.values() if e.state is not None)

    def _evict_locked(self, keep: str) -> None:
        held = self._held_locked()
        for e in sorted(self.entries.values(), key=lambda e: e.last_used):
            if held <= self.budget:
                break
            if e.name == keep or e.state is None:
                continue
            held -= e.size
            if e.file is not None and e.file.exists():
                e.state = None  # still on disk: read again when needed
            else:
                del self.entries[e.name]
            self.counters["evictions"] += 1

    def stats(self) -> dict:
        with self._lock:
            held = self._held_locked()
            n = len(self.entries)
        return {"cache_entries": n, "cache_bytes": held, "cache_budget_bytes": self.budget, **self.counters}

    def close(self, timeout: float = 10.0) -> None:
        """Let the disk writer finish what it has queued."""
        if self._writer is not None:
            self._jobs.put(None)
            self._writer.join(timeout)

    # ---- disk (writer thread) ---------------------------------------------------------------
    def _disk_loop(self) -> None:
        assert self._root is not None  # the thread runs only with a folder
        try:
            self._digest = self._digest_of() if self._digest_of else ""
            self._dir = self._root / self._digest
            self._dir.mkdir(parents=True, exist_ok=True)
            self._load_index()
        except OSError as exc:
            log.warning("prompt cache: %s is not usable (%s); keeping entries in memory only", self._root, exc)
            self._dir = None
        finally:
            self._disk_ready.set()
        try:
            if self._dir is not None:
                self._preload()
        finally:
            self._preloaded.set()
        while True:
            entry = self._jobs.get()
            if entry is None:
                return
            if self._dir is not None and entry.state is not None:
                self._write(entry)

    def _load_index(self) -> None:
        assert self._dir is not None
        for path in sorted(self._dir.glob("*.kv")):
            header = self._read_header(path)
            if header is None:
                continue
            toks = tuple(header["tokens"])
            e = Entry(toks, header["size"], None, file=path, name=path.stem)
            with self._lock:
                if e.name not in self.entries:
                    self.entries[e.name] = e

    def _preload(self) -> None:
        """Read the newest entries' states into memory while the budget has room for them, before a
        request needs them: after a reboot the kiosk's first question then restores from memory, not
        from the disk (reading and verifying a 16 MB state takes ~25 ms here, the restore itself ~3).
        A request that comes first reads its entry itself; entries it made are never displaced."""
        with self._lock:
            on_disk = [e for e in self.entries.values() if e.state is None and e.file is not None]
        for e in sorted(on_disk, key=lambda e: _mtime(e.file), reverse=True):
            with self._lock:
                if self._held_locked() + e.size > self.budget:
                    return
            state = self._read_state(e)
            with self._lock:
                if state is None:
                    self.entries.pop(e.name, None)
                    continue
                fits = self._held_locked() + e.size <= self.budget
                if e.state is None and self.entries.get(e.name) is e and fits:
                    e.state = state  # last_used stays 0: the first to go when room is needed

    def _read_header(self, path: Path) -> dict | None:
        try:
            with path.open("rb") as f:
                head = f.read(len(MAGIC) + 4)
                if len(head) < len(MAGIC) + 4 or head[: len(MAGIC)] != MAGIC:
                    raise ValueError("not a prompt-cache file")
                (n,) = struct.unpack("<I", head[len(MAGIC) :])
                if n > MAX_HEADER_BYTES:
                    raise ValueError(f"header of {n} bytes")
                header = json.loads(f.read(n))
            if not isinstance(header, dict) or header.get("model") != self._digest:
                raise ValueError("written for another model file")
            toks = header.get("tokens")
            size = header.get("size")
            if not isinstance(toks, list) or not all(isinstance(t, int) for t in toks) or not isinstance(size, int):
                raise ValueError("malformed header")
            if path.stat().st_size != len(MAGIC) + 4 + n + size:
                raise ValueError("truncated")
            header["offset"] = len(MAGIC) + 4 + n
            return header
        except (OSError, ValueError) as exc:
            self._reject(path, str(exc))
            return None

    def _read_state(self, entry: Entry) -> bytearray | None:
        self._disk_ready.wait(30)
        if entry.file is None:
            return None
        header = self._read_header(entry.file)
        if header is None:
            return None
        state = bytearray(header["size"])  # what llama.cpp's set_data reads from without a copy
        try:
            with entry.file.open("rb") as f:
                f.seek(header["offset"])
                got = f.readinto(state)
        except OSError as exc:
            self._reject(entry.file, str(exc))
            return None
        if got != len(state):
            self._reject(entry.file, "truncated")
            return None
        if hashlib.sha256(state).hexdigest() != header.get("sha256") or tuple(header["tokens"]) != entry.tokens:
            self._reject(entry.file, "sha256 mismatch")
            return None
        self.counters["disk_loads"] += 1
        return state

    def _reject(self, path: Path, why: str) -> None:
        self.counters["disk_rejected"] += 1
        log.warning("prompt cache: ignoring %s: %s", path.name, why)
        try:
            path.unlink()
        except OSError:
            pass

    def _write(self, entry: Entry) -> None:
        assert self._dir is not None and entry.state is not None
        header = json.dumps(
            {
                "model": self._digest,
                "tokens": list(entry.tokens),
                "size": entry.size,
                "sha256": hashlib.sha256(entry.state).hexdigest(),
            }
        ).encode()
        path = self._dir / f"{entry.name}.kv"
        try:
            with atomic_file(path, force=True) as tmp, tmp.open("wb") as f:
                f.write(MAGIC + struct.pack("<I", len(header)) + header)
                f.write(entry.state)
            entry.file = path
            self.counters["disk_writes"] += 1
            self._trim_disk()
        except OSError as exc:
            log.warning("prompt cache: could not write %s: %s", path, exc)

    def _trim_disk(self) -> None:
        assert self._dir is not None
        files = sorted(self._dir.glob("*.kv"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for p in files[:-1]:  # the newest always stays
            if total <= self.disk_budget:
                break
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            with self._lock:
                e = self.entries.get(p.stem)
                if e is not None:
                    e.file = None
                    if e.state is None:
                        del self.entries[p.stem]

    def _forget_file(self, e: Entry) -> None:
        if e.file is not None:
            try:
                e.file.unlink()
            except OSError:
                pass
