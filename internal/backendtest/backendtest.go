// Package backendtest is the conformance suite for the storage behind an
// NBD export (nbd.Backend) and a FUSE file (fusefs.Backend): RunNBD serves
// a backend to real NBD clients (qemu-io, qemu-img, nbdcopy, fio) and
// RunFUSE mounts it and runs pread/pwrite, fallocate and an ext4 file
// system on a loop device over it. Every implementation (tracker.Volume,
// failover.View) runs both from a plain `go test`, so they all keep the
// same promises. Both check the content after each step against an
// in-memory model of what the backend must hold.
//
// Only tests import this package.
package backendtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	osexec "os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"lifeboat/nbd"
)

// Backend is nbd.Backend, whose contract the suites check; fusefs.Backend
// has the same methods.
type Backend = nbd.Backend

// Factory returns a new backend of size bytes whose content starts as
// initial (len(initial) == size; zero bytes may be holes). It closes the
// backend in t.Cleanup. A factory over a recovery point writes initial
// into the replica and makes the point of it, so that reads of unwritten
// ranges exercise the base.
type Factory func(t *testing.T, size int64, initial []byte) Backend

// Size is the size of the backends the suites ask for: big enough for an
// ext4 file system with a journal and for fio, small enough for 2 cores.
const Size = 64 << 20

// Initial returns size bytes made of 1 MiB chunks that are zero, a
// repeated pattern or random, chosen by seed; the first and last chunks
// hold data, so the edges of the device are checked too. The result is
// the caller's to change.
func Initial(size int64, seed uint64) []byte {
	type key struct {
		size int64
		seed uint64
	}
	// Made once per process: generating 64 MiB is slow under -race.
	b, _ := initials.LoadOrStore(key{size, seed}, sync.OnceValue(func() []byte { return initial(size, seed) }))
	return bytes.Clone(b.(func() []byte)())
}

var initials sync.Map // key -> func() []byte

func initial(size int64, seed uint64) []byte {
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, 11))
	src := rand.NewChaCha8([32]byte{byte(seed), 7})
	const chunk = 1 << 20
	for off := int64(0); off < size; off += chunk {
		c := b[off:min(off+chunk, size)]
		kind := r.IntN(3)
		if off == 0 || off+chunk >= size {
			kind = 2
		}
		switch kind {
		case 0: // zero
		case 1:
			for i := range c {
				c[i] = byte(off>>20) ^ byte(i>>9) | 0x80
			}
		default:
			src.Read(c)
		}
	}
	return b
}

// newBackend calls f and checks the size of what it returns and that it
// reads as initial.
func newBackend(t *testing.T, f Factory, initial []byte) Backend {
	t.Helper()
	b := f(t, int64(len(initial)), initial)
	if got := b.Size(); got != int64(len(initial)) {
		t.Fatalf("Size() = %d, want %d", got, len(initial))
	}
	checkBackend(t, "new backend", b, initial)
	return b
}

// checkBackend reads the whole backend with ReadAt and compares it with
// the model.
func checkBackend(t *testing.T, what string, b Backend, model []byte) {
	t.Helper()
	got := make([]byte, len(model))
	if n, err := b.ReadAt(got, 0); err != nil || n != len(got) {
		t.Fatalf("%s: ReadAt(whole) = %d, %v", what, n, err)
	}
	checkEqual(t, what+" (backend ReadAt)", got, model)
}

// checkEqual fails the test at the first byte where got and want differ.
func checkEqual(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if i := FirstDiff(got, want); i >= 0 {
		if i >= min(len(got), len(want)) {
			t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
		}
		t.Fatalf("%s differs from the model at byte %d (4 KiB block %d): got %#x, want %#x",
			what, i, i/4096, got[i], want[i])
	}
}

// FirstDiff returns the first byte offset where a and b differ (the
// shorter length when one is a prefix of the other), -1 when they are
// equal.
func FirstDiff(a, b []byte) int {
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	for off := 0; off < len(a); off += 1 << 20 {
		end := min(off+1<<20, len(a))
		if !bytes.Equal(a[off:end], b[off:end]) {
			for i := off; i < end; i++ {
				if a[i] != b[i] {
					return i
				}
			}
		}
	}
	return -1
}

// writeSparse writes p to a new file at path, leaving zero MiBs as holes.
func writeSparse(t *testing.T, path string, p []byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(len(p))); err != nil {
		t.Fatal(err)
	}
	var zero [1 << 20]byte
	for off := 0; off < len(p); off += len(zero) {
		c := p[off:min(off+len(zero), len(p))]
		if bytes.Equal(c, zero[:len(c)]) {
			continue
		}
		if _, err := f.WriteAt(c, int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func sha(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// run runs a tool and returns its standard output; a failure ends the test
// with everything the tool printed.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := osexec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// pattern is the byte qemu-io writes for -P p.
func pattern(p byte) string { return fmt.Sprintf("0x%02x", p) }

// tryRun runs a tool that may fail and returns everything it printed.
func tryRun(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := osexec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}
