package failover

import "sync"

// nStripes is the number of block locks. Block b is guarded by stripe
// b % nStripes, so a 1 MiB request takes 256 of them and requests on
// different blocks rarely wait for each other.
const nStripes = 1024

// stripes are the block locks of a view: a change holds its blocks'
// stripes exclusively (a partial-block read-modify-write must not race
// another write of the block), a read holds them shared.
type stripes [nStripes]sync.RWMutex

// held is a set of stripes taken by lock: [0, lo) and [from, to).
type held struct {
	s            *stripes
	lo, from, to int
	write        bool
}

// lock takes the stripes of blocks b0..b1 (inclusive) in ascending stripe
// order, each once.
func (s *stripes) lock(b0, b1 int64, write bool) held {
	h := held{s: s, write: write}
	if n := b1 - b0 + 1; n >= nStripes {
		h.from, h.to = 0, nStripes
	} else {
		h.from = int(b0 % nStripes)
		h.to = h.from + int(n)
		if h.to > nStripes {
			h.lo, h.to = h.to-nStripes, nStripes
		}
	}
	for i := range h.lo {
		s.take(i, write)
	}
	for i := h.from; i < h.to; i++ {
		s.take(i, write)
	}
	return h
}

func (s *stripes) take(i int, write bool) {
	if write {
		s[i].Lock()
	} else {
		s[i].RLock()
	}
}

func (h held) unlock() {
	for i := range h.lo {
		h.release(i)
	}
	for i := h.from; i < h.to; i++ {
		h.release(i)
	}
}

func (h held) release(i int) {
	if h.write {
		h.s[i].Unlock()
	} else {
		h.s[i].RUnlock()
	}
}
