package nbd_test

import (
	"fmt"
	"sync"

	"lifeboat/nbd"
)

// memBackend is an in-memory Backend that records calls and can inject
// errors or block requests.
type memBackend struct {
	mu    sync.Mutex
	data  []byte
	holes map[int64]bool // 4 KiB blocks that were trimmed
	calls []string
	// fail, when set, is consulted before each operation ("read",
	// "write", "zero", "trim", "flush") and its error returned.
	fail func(op string, off int64) error
	// gate, when set, is called (outside the lock) before an operation
	// runs; it can block to hold a request in flight.
	gate func(op string, off int64)
}

var (
	_ nbd.Backend  = (*memBackend)(nil)
	_ nbd.Extenter = (*memBackend)(nil)
)

func newMem(size int) *memBackend {
	return &memBackend{data: make([]byte, size), holes: map[int64]bool{}}
}

func (m *memBackend) op(op string, off, n int64) error {
	if m.gate != nil {
		m.gate(op, off)
	}
	m.mu.Lock()
	m.calls = append(m.calls, fmt.Sprintf("%s %d %d", op, off, n))
	m.mu.Unlock()
	if m.fail != nil {
		return m.fail(op, off)
	}
	return nil
}

func (m *memBackend) log() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.calls...)
}

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	if err := m.op("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.data[off:]), nil
}

func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	if err := m.op("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for b := off / 4096; b*4096 < off+int64(len(p)); b++ {
		delete(m.holes, b)
	}
	return copy(m.data[off:], p), nil
}

func (m *memBackend) zero(op string, off, n int64) error {
	if err := m.op(op, off, n); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	if op == "trim" {
		for b := (off + 4095) / 4096; (b+1)*4096 <= off+n; b++ {
			m.holes[b] = true
		}
	}
	return nil
}

func (m *memBackend) WriteZeroes(off, n int64) error { return m.zero("zero", off, n) }
func (m *memBackend) Trim(off, n int64) error        { return m.zero("trim", off, n) }
func (m *memBackend) Flush() error                   { return m.op("flush", 0, 0) }
func (m *memBackend) Size() int64                    { return int64(len(m.data)) }

// Extents reports trimmed 4 KiB blocks as holes.
func (m *memBackend) Extents(off, n int64) ([]nbd.Extent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []nbd.Extent
	for pos := off; pos < off+n; {
		b := pos / 4096
		end := min((b+1)*4096, off+n)
		hole := m.holes[b]
		if k := len(out) - 1; k >= 0 && out[k].Hole == hole {
			out[k].Length += end - pos
		} else {
			out = append(out, nbd.Extent{Offset: pos, Length: end - pos, Hole: hole})
		}
		pos = end
	}
	return out, nil
}
