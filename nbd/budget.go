package nbd

import (
	"errors"
	"math/bits"
	"sync"
)

// errStopped ends a connection's reader that was waiting for its budget
// when the server began to shut down.
var errStopped = errors.New("server shutting down")

// budget bounds the payload bytes one connection holds: WRITE payloads read
// and not yet written to the backend, READ replies allocated and not yet
// sent. Each is counted as the pooled buffer it occupies (bufCost). The
// reader acquires before it reads a payload or hands on a READ; when the
// bytes would exceed the limit it waits, so the client is slowed through
// the socket and never sees an error. A request larger than the whole
// limit waits until nothing else is held and then runs alone.
type budget struct {
	srv   *Server // counters for tests and diagnostics
	mu    sync.Mutex
	cond  sync.Cond
	limit int64
	held  int64
	stop  bool
}

func newBudget(s *Server, limit int64) *budget {
	b := &budget{srv: s, limit: limit}
	b.cond.L = &b.mu
	return b
}

// acquire takes n bytes, waiting while they do not fit. It returns false,
// holding nothing, once stopAll was called.
func (b *budget) acquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fits(n) {
		b.take(n)
		return true
	}
	b.srv.waiting.Add(1)
	for !b.stop && !b.fits(n) {
		b.cond.Wait()
	}
	b.srv.waiting.Add(-1)
	if b.stop {
		return false
	}
	b.take(n)
	return true
}

func (b *budget) fits(n int64) bool { return b.held == 0 || b.held+n <= b.limit }

func (b *budget) take(n int64) {
	b.held += n
	b.srv.held.Add(n)
	for {
		p := b.srv.peak.Load()
		if b.held <= p || b.srv.peak.CompareAndSwap(p, b.held) {
			return
		}
	}
}

// release returns n bytes taken by acquire.
func (b *budget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.held -= n
	b.srv.held.Add(-n)
	b.mu.Unlock()
	b.cond.Broadcast()
}

// stopAll wakes a waiting acquire and makes every later one fail.
func (b *budget) stopAll() {
	b.mu.Lock()
	b.stop = true
	b.mu.Unlock()
	b.cond.Broadcast()
}

// bufCost is what a payload of n bytes holds: the pool buffer it gets,
// whose size is n rounded up to a power of two (at least 512 bytes).
func bufCost(n uint32) int64 {
	if n == 0 {
		return 0
	}
	return 1 << max(minClass, bits.Len32(n-1))
}
