// Package cache keeps node-local copies of objects streamed from object
// stores, so that the next load of the same model reads local files.
//
// An entry is one object at one version: its file is named after a hash of
// the store's endpoint, the object's URI, its size and its version (ETag,
// generation, version ID: storage.Versioned), all of which the backend
// learns from the metadata request it makes at every open. A changed object
// therefore has another name: an entry is never served for bytes that are
// no longer the object's.
//
// Files, in Dir/v1 (NAME = URIHASH-VERSIONHASH):
//
//	NAME.data          the object's bytes; exists only when complete and verified
//	NAME.json          what the entry is (URI, version, size, checksum); its
//	                   modification time is the entry's last use (LRU)
//	NAME.lock          flock(2): shared while a stream reads the entry,
//	                   exclusive while a stream writes it or eviction removes it
//	NAME.tmp.PID.RAND  an entry being written
//
// An entry becomes visible only by the rename of its complete, checksummed
// and fsynced temporary file, so a crash, kill -9 or full disk leaves at most
// a temporary file, which nothing reads and Prune removes.
package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Settings read by the host (Python) and passed in ms_config.
const (
	DirSetting      = "MODEL_STREAMER_CACHE_DIR"
	MaxBytesSetting = "MODEL_STREAMER_CACHE_MAX_BYTES"
)

// DefaultShare is the part of the space the cache could use (what it holds
// plus the file system's free space) that it may fill when no limit is set.
const DefaultShare = 0.5

// layout is the subdirectory of the format: a future format gets another.
const layout = "v1"

const (
	dataSuffix = ".data"
	metaSuffix = ".json"
	lockSuffix = ".lock"
	tmpInfix   = ".tmp."
)

// Cache is one cache directory with its size limit.
type Cache struct {
	dir string // Dir/v1
	max int64
}

// Open prepares the cache in dir (created if missing). maxBytes <= 0 sets
// the default: DefaultShare of what the cache holds plus the file system's
// free space now.
func Open(dir string, maxBytes int64) (*Cache, error) {
	if dir == "" {
		return nil, errors.New("cache: no directory")
	}
	d := filepath.Join(dir, layout)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	c := &Cache{dir: d, max: maxBytes}
	if maxBytes <= 0 {
		var st unix.Statfs_t
		if err := unix.Statfs(d, &st); err != nil {
			return nil, fmt.Errorf("cache: statfs %s: %w", d, err)
		}
		free := int64(st.Bavail) * int64(st.Bsize)
		c.max = int64(float64(free+c.usage()) * DefaultShare)
	}
	return c, nil
}

// ParseMaxBytes reads MODEL_STREAMER_CACHE_MAX_BYTES: a byte count, with
// an optional K, M, G or T suffix (powers of 1024); "" is 0 (the default).
func ParseMaxBytes(v string) (int64, error) {
	s := strings.ToUpper(strings.TrimSpace(v))
	if s == "" {
		return 0, nil
	}
	s = strings.TrimSuffix(strings.TrimSuffix(s, "B"), "I")
	mult := int64(1)
	if s == "" {
		return 0, fmt.Errorf("%s=%q: expected a byte count, e.g. 500G", MaxBytesSetting, v)
	}
	if k := strings.IndexByte("KMGT", s[len(s)-1]); k >= 0 {
		mult = int64(1) << (10 * (k + 1))
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%s=%q: expected a byte count, e.g. 500G", MaxBytesSetting, v)
	}
	return n * mult, nil
}

// Dir is the directory entries live in (Dir/v1).
func (c *Cache) Dir() string { return c.dir }

// MaxBytes is the limit the cache keeps under.
func (c *Cache) MaxBytes() int64 { return c.max }

// entry names the files of one object version.
type entry struct {
	base string // Dir/v1/NAME
	uri  string
	ver  string
	size int64
}

func (e entry) data() string { return e.base + dataSuffix }
func (e entry) meta() string { return e.base + metaSuffix }
func (e entry) lock() string { return e.base + lockSuffix }

func hash(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// uriPrefix is the part of an entry's name every version of uri shares.
func (c *Cache) uriPrefix(namespace, uri string) string {
	return hash(namespace, uri)[:32] + "-"
}

func (c *Cache) entry(namespace, uri, version string, size int64) entry {
	name := c.uriPrefix(namespace, uri) + hash(version, strconv.FormatInt(size, 10))[:16]
	return entry{base: filepath.Join(c.dir, name), uri: uri, ver: version, size: size}
}

// Meta is what NAME.json records about an entry.
type Meta struct {
	URI     string `json:"uri"`
	Version string `json:"version"`
	Size    int64  `json:"size"`
	// Checksum is what the entry's bytes were verified against
	// ("crc32c:1a2b3c4d" from the store, or "crc32c:... (written)" when the
	// store keeps no usable checksum and the bytes were checked as written).
	Checksum string    `json:"checksum"`
	Created  time.Time `json:"created"`
}

// Entry describes one complete entry (List).
type Entry struct {
	Meta
	Name     string    `json:"name"`
	Path     string    `json:"path"`
	LastUsed time.Time `json:"last_used"`
	InUse    bool      `json:"in_use"`
}

// usage is the bytes the cache's files hold: complete entries and
// entries being written (allocated to their full size when they start).
func (c *Cache) usage() int64 {
	var total int64
	des, _ := os.ReadDir(c.dir)
	for _, de := range des {
		n := de.Name()
		if strings.HasSuffix(n, dataSuffix) || strings.Contains(n, tmpInfix) {
			if fi, err := de.Info(); err == nil {
				total += fi.Size()
			}
		}
	}
	return total
}

// Usage is the bytes the cache holds now (complete and partial entries).
func (c *Cache) Usage() int64 { return c.usage() }

// List returns the complete entries, least recently used first.
func (c *Cache) List() ([]Entry, error) {
	des, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	var out []Entry
	for _, de := range des {
		name, ok := strings.CutSuffix(de.Name(), dataSuffix)
		if !ok {
			continue
		}
		base := filepath.Join(c.dir, name)
		fi, err := de.Info()
		if err != nil {
			continue // evicted meanwhile
		}
		e := Entry{Name: name, Path: base + dataSuffix, LastUsed: fi.ModTime()}
		e.Size = fi.Size()
		if b, err := os.ReadFile(base + metaSuffix); err == nil {
			_ = json.Unmarshal(b, &e.Meta)
			if mi, err := os.Stat(base + metaSuffix); err == nil {
				e.LastUsed = mi.ModTime()
			}
		}
		e.Size = fi.Size()
		if l, err := lock(base+lockSuffix, unix.LOCK_EX); err == nil {
			l.Close()
		} else {
			e.InUse = true
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Entry) int { return a.LastUsed.Compare(b.LastUsed) })
	return out, nil
}

// verifiedAs is the store's checksum e's bytes were verified against when
// it was written, or "" when the store kept none (the bytes were then only
// checked as written: see Meta.Checksum).
func verifiedAs(e entry) string {
	b, err := os.ReadFile(e.meta())
	if err != nil {
		return ""
	}
	var m Meta
	if json.Unmarshal(b, &m) != nil || strings.HasSuffix(m.Checksum, writtenSuffix) {
		return ""
	}
	return m.Checksum
}

// touch records a use of e (its LRU time).
func touch(e entry) {
	now := time.Now()
	_ = os.Chtimes(e.meta(), now, now)
}

// remove deletes the entry at base, which the caller holds exclusively
// (its lock file last, still held, so a process that opened it before the
// unlink finds it gone and retries; see lock).
func remove(base string) {
	_ = os.Remove(base + dataSuffix)
	_ = os.Remove(base + metaSuffix)
	_ = os.Remove(base + lockSuffix)
}

// evict removes least recently used entries that no stream uses until
// need more bytes fit under the limit, and reports whether they do.
func (c *Cache) evict(need int64) bool {
	total := c.usage()
	if total+need <= c.max {
		return true
	}
	entries, err := c.List()
	if err != nil {
		return false
	}
	for _, e := range entries {
		if total+need <= c.max {
			break
		}
		base := filepath.Join(c.dir, e.Name)
		l, err := lock(base+lockSuffix, unix.LOCK_EX)
		if err != nil {
			continue // in use: never evicted
		}
		if fi, err := os.Stat(base + dataSuffix); err == nil {
			total -= fi.Size()
		}
		remove(base)
		l.Close()
	}
	return total+need <= c.max
}

// PruneResult says what Prune and Clear removed.
type PruneResult struct {
	Entries      int   `json:"entries"`
	Partial      int   `json:"partial"` // temporary files of writes that died
	BytesFreed   int64 `json:"bytes_freed"`
	EntriesInUse int   `json:"entries_in_use"` // left in place
}

// Prune evicts least recently used entries down to the limit and removes
// what interrupted writes left (temporary files, lone metadata and lock
// files), never touching an entry or a write in progress.
func (c *Cache) Prune() (PruneResult, error) {
	before := c.usage()
	n := 0
	if entries, err := c.List(); err == nil {
		n = len(entries)
	}
	c.evict(0)
	r := c.sweep()
	if entries, err := c.List(); err == nil {
		r.Entries = n - len(entries)
		for _, e := range entries {
			if e.InUse {
				r.EntriesInUse++
			}
		}
	}
	r.BytesFreed = before - c.usage()
	return r, nil
}

// Clear removes every entry no stream uses, and what interrupted writes left.
func (c *Cache) Clear() (PruneResult, error) {
	before := c.usage()
	entries, err := c.List()
	if err != nil {
		return PruneResult{}, err
	}
	var r PruneResult
	for _, e := range entries {
		base := filepath.Join(c.dir, e.Name)
		l, err := lock(base+lockSuffix, unix.LOCK_EX)
		if err != nil {
			r.EntriesInUse++
			continue
		}
		remove(base)
		l.Close()
		r.Entries++
	}
	s := c.sweep()
	r.Partial = s.Partial
	r.BytesFreed = before - c.usage()
	return r, nil
}

// sweep removes the leftovers of writes that died: temporary files and
// metadata or lock files without data, each only when its lock is free
// (a live writer holds it exclusively).
func (c *Cache) sweep() PruneResult {
	var r PruneResult
	des, _ := os.ReadDir(c.dir)
	bases := map[string]bool{}
	for _, de := range des {
		n := de.Name()
		switch {
		case strings.Contains(n, tmpInfix):
			bases[n[:strings.Index(n, tmpInfix)]] = true
		case strings.HasSuffix(n, metaSuffix), strings.HasSuffix(n, lockSuffix):
			bases[strings.TrimSuffix(strings.TrimSuffix(n, metaSuffix), lockSuffix)] = true
		}
	}
	for name := range bases {
		base := filepath.Join(c.dir, name)
		l, err := lock(base+lockSuffix, unix.LOCK_EX)
		if err != nil {
			continue
		}
		r.Partial += removeTemps(base)
		if _, err := os.Stat(base + dataSuffix); errors.Is(err, fs.ErrNotExist) {
			remove(base)
		}
		l.Close()
	}
	return r
}

// removeTemps removes the temporary files of base, whose lock the caller
// holds exclusively (so no live writer owns them), and counts them.
func removeTemps(base string) int {
	tmps, _ := filepath.Glob(base + tmpInfix + "*")
	for _, t := range tmps {
		_ = os.Remove(t)
	}
	return len(tmps)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
