package tracker

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// clearCand is a region whose every change was acknowledged at acked (the
// zero time: during a resync, to be cleared at the next checkpoint).
type clearCand struct {
	r     int64
	acked time.Time
	n     uint64 // order of the acknowledgements: the latest one of a region counts
}

// checkpoint makes the backing store durable and then clears, in the
// persisted bitmap, acknowledged regions by the rule of the package
// comment: those acknowledged while a resync was pending, and, once more
// regions are dirty than HotSetBytes allows, the least recently
// acknowledged of those idle for ClearDelay, down to the budget (all of
// them with all: Close).
// The order matters: a bit may only be cleared once the backing store
// holds that region's acknowledged content durably, or a power loss would
// bring back older backing bytes that no dirty bit covers. Keeping bits
// set longer never makes the bitmap under-report; it spares the sync of
// Mark for a region written again while its bit is still set, which,
// while replicating, is most writes.
func (v *Volume) checkpoint(all bool) error {
	if err := v.syncAcked(); err != nil {
		return err
	}
	v.mu.Lock()
	cands := v.pickClears(all)
	var reacked *regionsSeen
	if len(cands) > 0 { // most Flushes clear nothing: no set to keep
		reacked = &regionsSeen{m: map[int64]struct{}{}}
		v.reacked = append(v.reacked, reacked)
	}
	v.mu.Unlock()
	if reacked != nil {
		defer func() {
			v.mu.Lock()
			v.reacked = slices.DeleteFunc(v.reacked, func(m *regionsSeen) bool { return m == reacked })
			v.mu.Unlock()
		}()
		// Barrier: every write that started before now has reached the
		// backing store (writes hold their range lock until then).
		v.locks.barrier()
	}
	if err := v.backing.Sync(); err != nil {
		v.requeue(cands)
		return fmt.Errorf("sync backing store %s: %w", v.Path, err)
	}
	for _, c := range cands {
		// Under the region's range lock a write to it is either entirely
		// before (it re-touched the region: keep the bit) or entirely after
		// (its Mark sets the bit again and persists it). A write since the
		// backing store's sync that is already acknowledged is no longer
		// in touched but in reacked: its bytes may not be durable yet.
		off, end := c.r*v.RegionSize, min((c.r+1)*v.RegionSize, v.size)
		v.locks.lock(off, end)
		v.mu.Lock()
		_, again := v.touched[c.r]
		if _, acked := reacked.m[c.r]; !again && !acked && !v.pinned.has(c.r) {
			v.bitmap.Clear(c.r)
		}
		v.mu.Unlock()
		v.locks.unlock(off, end)
	}
	return v.bitmap.Sync()
}

// regionsSeen is the set of regions acknowledged while one checkpoint
// runs (Volume.reacked holds one per running checkpoint).
type regionsSeen struct{ m map[int64]struct{} }

// addClearable records that every change to region r was acknowledged
// now; copied: by a resync, to be cleared at the next checkpoint. The
// latest acknowledgement of a region is the one that counts. The caller
// holds v.mu.
func (v *Volume) addClearable(r int64, copied bool) {
	v.ackN++
	c := clearCand{r: r, n: v.ackN}
	if !copied {
		c.acked = time.Now()
	}
	if old, ok := v.clearable[r]; ok && old.acked.IsZero() {
		v.copiedCands--
	}
	if copied {
		v.copiedCands++
	}
	v.clearable[r] = c
}

// pickClears takes out of v.clearable the regions to clear now (all of
// them with all). The caller holds v.mu. Cheap when there is nothing to
// clear: a Flush checkpoints too.
func (v *Volume) pickClears(all bool) []clearCand {
	var out []clearCand
	take := func(c clearCand) {
		out = append(out, c)
		if c.acked.IsZero() {
			v.copiedCands--
		}
		delete(v.clearable, c.r)
	}
	hot := v.hotRegions()
	excess := v.bitmap.Dirty() - hot
	if !all && v.copiedCands == 0 && hot > 0 && excess <= 0 {
		return nil
	}
	due := time.Now().Add(-v.ClearDelay)
	var idle []clearCand
	for _, c := range v.clearable {
		switch {
		case all || c.acked.IsZero():
			take(c)
			excess--
		case !c.acked.After(due):
			idle = append(idle, c)
		}
	}
	if hot == 0 {
		excess = int64(len(idle))
	}
	if excess > 0 && len(idle) > 0 {
		// The least recently acknowledged first.
		slices.SortFunc(idle, func(a, b clearCand) int { return cmp.Compare(a.n, b.n) })
		for _, c := range idle[:min(int64(len(idle)), excess)] {
			take(c)
		}
	}
	return out
}

// hotRegions is HotSetBytes in regions (0: no hot set).
func (v *Volume) hotRegions() int64 {
	if v.HotSetBytes <= 0 {
		return 0
	}
	return max(1, v.HotSetBytes/v.RegionSize)
}

func (v *Volume) requeue(cands []clearCand) {
	v.mu.Lock()
	for _, c := range cands {
		if _, newer := v.clearable[c.r]; !newer {
			v.clearable[c.r] = c
			if c.acked.IsZero() {
				v.copiedCands++
			}
		}
	}
	v.mu.Unlock()
}
