// Package hrltest provides CrashFS, an in-memory hrl.FS for tests that
// injects failures at named operations and simulates a crash that drops
// every byte and directory entry not yet made durable.
//
// Durability follows the hrl.FS contract: file content is durable after
// File.Sync, a created, removed or renamed name after SyncDir of its
// directory. Directories themselves (MkdirAll) are durable at once.
//
// Mutating operations are named "create" (an OpenFile that creates),
// "write", "truncate" (File.Truncate, or OpenFile with O_TRUNC of an
// existing file), "punch", "zero", "sync", "syncdir", "remove" and
// "rename". A call that fails validation (missing file, closed handle,
// wrong access mode, n <= 0 for PunchHole/ZeroRange) is not a mutating
// operation: it is not counted, cannot be faulted, and returns its usual
// error even after the crash point. Errors are wrapped in *fs.PathError
// (*os.LinkError for Rename); match them with errors.Is.
package hrltest

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"lifeboat/hrl"
)

// ErrCrashed is returned by every mutating operation once the crash point
// armed by CrashAfter has been reached.
var ErrCrashed = errors.New("hrltest: simulated crash: file system is dead")

// CrashMode selects what Crash keeps of the mutations not yet synced.
type CrashMode int

const (
	// DropUnsynced keeps only durable content.
	DropUnsynced CrashMode = iota
	// KeepPrefix re-applies a random-length prefix of each file's pending
	// mutations; the last one, if a write, may be torn (only a random
	// prefix of its bytes applied).
	KeepPrefix
	// KeepRandom re-applies each pending mutation independently, in order,
	// with probability 1/2.
	KeepRandom
)

func (m CrashMode) String() string {
	switch m {
	case DropUnsynced:
		return "DropUnsynced"
	case KeepPrefix:
		return "KeepPrefix"
	case KeepRandom:
		return "KeepRandom"
	}
	return fmt.Sprintf("CrashMode(%d)", int(m))
}

var opNames = map[string]bool{
	"create": true, "write": true, "truncate": true, "punch": true, "zero": true,
	"sync": true, "syncdir": true, "remove": true, "rename": true,
}

type mutKind uint8

const (
	mutWrite mutKind = iota
	mutTruncate
	mutPunch
	mutZero
)

// mutation is a pending, replayable change to an inode's content.
type mutation struct {
	kind   mutKind
	off, n int64 // n: length for punch/zero, new size for truncate
	data   []byte
}

func (m mutation) apply(b []byte) []byte {
	switch m.kind {
	case mutWrite:
		if len(m.data) == 0 {
			return b
		}
		if end := m.off + int64(len(m.data)); end > int64(len(b)) {
			b = resize(b, end)
		}
		copy(b[m.off:], m.data)
	case mutTruncate:
		b = resize(b, m.n)
	case mutPunch, mutZero:
		if end := min(m.off+m.n, int64(len(b))); m.off < end {
			clear(b[m.off:end])
		}
	}
	return b
}

// resize shrinks or zero-extends b; append writes the zeros, so no stale
// bytes beyond len(b) can reappear.
func resize(b []byte, n int64) []byte {
	if n <= int64(len(b)) {
		return b[:n]
	}
	return append(b, make([]byte, n-int64(len(b)))...)
}

type inode struct {
	data    []byte     // current content
	durable []byte     // content as of the last successful Sync
	pending []mutation // mutations since that Sync
}

func (ino *inode) mutate(m mutation) {
	ino.data = m.apply(ino.data)
	ino.pending = append(ino.pending, m)
}

type failRule struct {
	op    string
	left  int
	err   error
	isAll bool   // FailPath rule: every occurrence on a matching path
	sfx   string // FailPath suffix
}

// CrashFS is an in-memory hrl.FS. The zero value is not usable; call New.
// It is safe for concurrent use.
type CrashFS struct {
	mu      sync.Mutex
	files   map[string]*inode // current namespace
	durable map[string]*inode // durable namespace
	dirs    map[string]bool
	gen     int // bumped by Crash; handles of older generations are dead
	ops     int
	armed   bool
	left    int // mutating ops still allowed while armed
	crashed bool
	faults  []failRule
}

var _ hrl.FS = (*CrashFS)(nil)

// New returns an empty CrashFS with directories "/" and ".".
func New() *CrashFS {
	return &CrashFS{
		files:   map[string]*inode{},
		durable: map[string]*inode{},
		dirs:    map[string]bool{"/": true, ".": true},
	}
}

func pathErr(op, path string, err error) error { return &fs.PathError{Op: op, Path: path, Err: err} }

// gate accounts for one mutating operation on paths; a non-nil error means
// the operation must fail without effect. Callers hold s.mu.
func (s *CrashFS) gate(op string, paths ...string) error {
	if s.crashed {
		return ErrCrashed
	}
	s.ops++
	if s.armed {
		if s.left--; s.left <= 0 {
			s.crashed = true
		}
	}
	var err error
	kept := s.faults[:0]
	for _, r := range s.faults {
		if r.op == op && !r.isAll {
			if r.left--; r.left == 0 {
				if err == nil {
					err = r.err
				}
				continue
			}
		}
		kept = append(kept, r)
	}
	clear(s.faults[len(kept):])
	s.faults = kept
	for _, r := range s.faults {
		if err == nil && r.op == op && r.isAll {
			for _, p := range paths {
				if strings.HasSuffix(p, r.sfx) {
					err = r.err
					break
				}
			}
		}
	}
	return err
}

// Ops returns the number of mutating operations counted so far.
func (s *CrashFS) Ops() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ops
}

// CrashAfter arms the crash point: after n more mutating operations
// (counted from this call), every further one fails with ErrCrashed and has
// no effect. Reads keep working. CrashAfter(0) crashes at once; n < 0
// disarms (but does not revive an FS that has already crashed; use Crash).
func (s *CrashFS) CrashAfter(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.armed, s.left = n >= 0, n
	if n == 0 {
		s.crashed = true
	}
}

// Crashed reports whether the crash point armed by CrashAfter was reached.
func (s *CrashFS) Crashed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.crashed
}

func checkOp(op string) {
	if !opNames[op] {
		panic(fmt.Sprintf("hrltest: unknown operation %q", op))
	}
}

// FailAt makes the nth (1-based, counted from this call) occurrence of op
// fail with err, without effect. It panics on an unknown op or nth < 1.
func (s *CrashFS) FailAt(op string, nth int, err error) {
	checkOp(op)
	if nth < 1 {
		panic("hrltest: FailAt: nth must be >= 1")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, failRule{op: op, left: nth, err: err})
}

// FailPath makes every occurrence of op on a path ending in pathSuffix fail
// with err, without effect, until ClearFaults. File operations match the
// cleaned path the file was opened with; rename matches either name.
func (s *CrashFS) FailPath(op, pathSuffix string, err error) {
	checkOp(op)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, failRule{op: op, err: err, isAll: true, sfx: pathSuffix})
}

// ClearFaults removes every FailAt and FailPath rule. Crash does not.
func (s *CrashFS) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// Crash simulates power loss and reboot: every open File becomes invalid
// (os.ErrClosed), the namespace reverts to the durable one, and each file's
// content to its durable content plus what mode keeps of its pending
// mutations, drawn from rng (files are visited in name order, so a seeded
// rng gives a reproducible result; nil means a fixed seed). Afterwards
// everything is durable, the crash point is disarmed and the op counter
// continues. Fault rules are kept.
func (s *CrashFS) Crash(mode CrashMode, rng *rand.Rand) {
	if mode < DropUnsynced || mode > KeepRandom {
		panic(fmt.Sprintf("hrltest: Crash: invalid mode %v", mode))
	}
	if rng == nil {
		rng = rand.New(rand.NewPCG(1, 2))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	s.armed, s.crashed = false, false
	names := make([]string, 0, len(s.durable))
	for name := range s.durable {
		names = append(names, name)
	}
	sort.Strings(names)
	s.files = make(map[string]*inode, len(names))
	seen := map[*inode]bool{}
	for _, name := range names {
		ino := s.durable[name]
		s.files[name] = ino
		if !seen[ino] {
			seen[ino] = true
			ino.recover(mode, rng)
		}
	}
}

func (ino *inode) recover(mode CrashMode, rng *rand.Rand) {
	data := bytes.Clone(ino.durable)
	switch mode {
	case KeepPrefix:
		k := rng.IntN(len(ino.pending) + 1)
		for i, m := range ino.pending[:k] {
			if i == k-1 && m.kind == mutWrite {
				m.data = m.data[:rng.IntN(len(m.data)+1)] // torn write
			}
			data = m.apply(data)
		}
	case KeepRandom:
		for _, m := range ino.pending {
			if rng.IntN(2) == 0 {
				data = m.apply(data)
			}
		}
	}
	ino.data, ino.durable, ino.pending = data, bytes.Clone(data), nil
}

// ReadFile returns a copy of the current content of name.
func (s *CrashFS) ReadFile(name string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ino, err := s.lookup("readfile", name)
	if err != nil {
		return nil, err
	}
	return bytes.Clone(ino.data), nil
}

// WriteFile creates or replaces name (creating parent directories) with
// data, content and name durable at once. It is for fixtures: it is not
// counted, cannot be faulted and works after the crash point. Open handles
// of an existing file see the new content.
func (s *CrashFS) WriteFile(name string, data []byte) error {
	p := filepath.Clean(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dirs[p] {
		return pathErr("writefile", name, syscall.EISDIR)
	}
	if err := s.mkdirAll("writefile", filepath.Dir(p)); err != nil {
		return err
	}
	ino := s.files[p]
	if ino == nil {
		ino = &inode{}
		s.files[p] = ino
	}
	ino.data, ino.durable, ino.pending = bytes.Clone(data), bytes.Clone(data), nil
	s.durable[p] = ino
	return nil
}

// FlipByte XORs the byte at off of name with 0x01 (a single bit flip), in
// both the current and, where it reaches off, the durable content.
func (s *CrashFS) FlipByte(name string, off int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ino, err := s.lookup("flipbyte", name)
	if err != nil {
		return err
	}
	if off < 0 || off >= int64(len(ino.data)) {
		return pathErr("flipbyte", name, fmt.Errorf("offset %d outside size %d", off, len(ino.data)))
	}
	ino.data[off] ^= 1
	if off < int64(len(ino.durable)) {
		ino.durable[off] ^= 1
	}
	return nil
}

func (s *CrashFS) lookup(op, name string) (*inode, error) {
	p := filepath.Clean(name)
	if s.dirs[p] {
		return nil, pathErr(op, name, syscall.EISDIR)
	}
	ino := s.files[p]
	if ino == nil {
		return nil, pathErr(op, name, fs.ErrNotExist)
	}
	return ino, nil
}
