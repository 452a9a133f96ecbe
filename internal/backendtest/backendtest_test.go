package backendtest_test

import (
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"lifeboat/internal/backendtest"
)

// mem is an in-memory backend; broken names a promise it breaks.
type mem struct {
	mu     sync.Mutex
	data   []byte
	broken string
}

func (m *mem) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.data[off:]), nil
}

func (m *mem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.broken == "unaligned-write" && (off%4096 != 0 || len(p)%4096 != 0) {
		// Writes the blocks the range touches only up to the last whole one.
		return len(p), nil
	}
	copy(m.data[off:], p)
	return len(p), nil
}

func (m *mem) zero(off, n int64, broken bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if broken {
		// Zeroes whole 4 KiB blocks only, as a lazy implementation might.
		lo, hi := (off+4095)/4096*4096, (off+n)/4096*4096
		if lo < hi {
			clear(m.data[lo:hi])
		}
		return nil
	}
	clear(m.data[off : off+n])
	return nil
}

func (m *mem) WriteZeroes(off, n int64) error { return m.zero(off, n, m.broken == "zero-partial") }
func (m *mem) Trim(off, n int64) error        { return m.zero(off, n, m.broken == "trim-partial") }
func (m *mem) Flush() error                   { return nil }
func (m *mem) Size() int64                    { return int64(len(m.data)) }

func factory(broken string) backendtest.Factory {
	return func(t *testing.T, size int64, initial []byte) backendtest.Backend {
		m := &mem{data: make([]byte, size), broken: broken}
		if broken != "initial-ignored" {
			copy(m.data, initial)
		}
		return m
	}
}

// A correct in-memory backend passes both suites.
func TestMemory(t *testing.T) {
	t.Run("NBD", func(t *testing.T) { backendtest.RunNBD(t, factory("")) })
	t.Run("FUSE", func(t *testing.T) { backendtest.RunFUSE(t, factory("")) })
}

// TestBrokenHelper runs a suite against a broken backend; it is run by
// TestBrokenBackendsFail in a child process, as its failure is the point.
func TestBrokenHelper(t *testing.T) {
	broken, suite := os.Getenv("BACKENDTEST_BROKEN"), os.Getenv("BACKENDTEST_SUITE")
	if broken == "" {
		t.Skip("run by TestBrokenBackendsFail")
	}
	if suite == "NBD" {
		backendtest.RunNBD(t, factory(broken))
	} else {
		backendtest.RunFUSE(t, factory(broken))
	}
}

// Each broken promise makes a suite fail, with a message that says where.
func TestBrokenBackendsFail(t *testing.T) {
	for _, tc := range []struct{ broken, suite, want string }{
		{"initial-ignored", "NBD", "new backend (backend ReadAt) differs from the model"},
		{"trim-partial", "NBD", "Pattern verification"},
		{"zero-partial", "NBD", "Pattern verification"},
		{"unaligned-write", "FUSE", "pread around write 0 differs"},
		{"trim-partial", "FUSE", "pread around fallocate differs"},
	} {
		t.Run(tc.suite+"/"+tc.broken, func(t *testing.T) {
			if tc.suite == "FUSE" && os.Geteuid() != 0 {
				t.Skip("mounting FUSE needs root")
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenHelper$", "-test.v")
			cmd.Env = append(os.Environ(), "BACKENDTEST_BROKEN="+tc.broken, "BACKENDTEST_SUITE="+tc.suite)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), "--- FAIL: TestBrokenHelper") || !strings.Contains(string(out), tc.want) {
				t.Fatalf("suite against a backend with %s: err %v, want a failure saying %q:\n%s", tc.broken, err, tc.want, out)
			}
		})
	}
}
