package tracker

import "sync"

// rangeLock serialises operations on overlapping byte ranges. Operations on
// disjoint ranges proceed in parallel. It is built for the tens of requests
// an NBD client keeps in flight: a linear scan, no allocation once warm.
type rangeLock struct {
	mu       sync.Mutex
	cond     sync.Cond
	active   []lockedRange
	draining int // barriers waiting; new lockers queue behind them
}

type lockedRange struct{ start, end int64 }

func (l *rangeLock) lock(start, end int64) {
	l.mu.Lock()
	if l.cond.L == nil {
		l.cond.L = &l.mu
	}
	for l.draining > 0 || l.overlaps(start, end) {
		l.cond.Wait()
	}
	l.active = append(l.active, lockedRange{start, end})
	l.mu.Unlock()
}

func (l *rangeLock) overlaps(start, end int64) bool {
	for _, r := range l.active {
		if start < r.end && r.start < end {
			return true
		}
	}
	return false
}

func (l *rangeLock) unlock(start, end int64) {
	l.mu.Lock()
	for i, r := range l.active {
		if r.start == start && r.end == end {
			last := len(l.active) - 1
			l.active[i] = l.active[last]
			l.active = l.active[:last]
			break
		}
	}
	l.cond.Broadcast()
	l.mu.Unlock()
}

// barrier returns once every range locked before it was called has been
// unlocked. Lockers arriving meanwhile wait for it, so it cannot starve.
func (l *rangeLock) barrier() {
	l.mu.Lock()
	if l.cond.L == nil {
		l.cond.L = &l.mu
	}
	l.draining++
	for len(l.active) > 0 {
		l.cond.Wait()
	}
	l.draining--
	l.cond.Broadcast()
	l.mu.Unlock()
}
