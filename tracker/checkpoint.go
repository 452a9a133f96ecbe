package tracker

import (
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
	v.mu.Lock()
	cands, keep := v.pickClears(all)
	v.clearable = keep
	v.reacked = map[int64]struct{}{}
	v.mu.Unlock()
	defer func() {
		v.mu.Lock()
		v.reacked = nil
		v.mu.Unlock()
	}()
	if len(cands) > 0 {
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
		if _, acked := v.reacked[c.r]; !again && !acked && !v.pinned.has(c.r) {
			v.bitmap.Clear(c.r)
		}
		v.mu.Unlock()
		v.locks.unlock(off, end)
	}
	return v.bitmap.Sync()
}

// pickClears splits the candidates into those to clear now and those to
// keep for a later checkpoint. A region acknowledged several times counts
// once, as its last acknowledgement says (a region copied by a resync and
// written since is hot). The caller holds v.mu.
func (v *Volume) pickClears(all bool) (clear, keep []clearCand) {
	latest := make(map[int64]int, len(v.clearable))
	uniq := v.clearable[:0]
	for _, c := range v.clearable {
		if i, ok := latest[c.r]; ok {
			if c.n > uniq[i].n {
				uniq[i] = c
			}
			continue
		}
		latest[c.r] = len(uniq)
		uniq = append(uniq, c)
	}
	if all {
		return uniq, nil
	}
	// Oldest acknowledgement first (resync ones, the zero time, lead).
	slices.SortStableFunc(uniq, func(a, b clearCand) int { return a.acked.Compare(b.acked) })
	excess := int64(len(uniq)) // HotSetBytes 0: every idle region goes
	if hot := v.hotRegions(); hot > 0 {
		excess = v.bitmap.Dirty() - hot
	}
	due := time.Now().Add(-v.ClearDelay)
	for _, c := range uniq {
		switch {
		case c.acked.IsZero():
			clear = append(clear, c)
			excess--
		case excess > 0 && !c.acked.After(due):
			clear = append(clear, c)
			excess--
		default:
			keep = append(keep, c)
		}
	}
	return clear, keep
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
	v.clearable = append(v.clearable, cands...)
	v.mu.Unlock()
}
