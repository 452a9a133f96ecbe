package failover

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"time"

	"lifeboat/failback"
	"lifeboat/pipeline"
	"lifeboat/targets"
	"lifeboat/tracker"
)

// DefaultReverseTagInterval is how often reverse replication takes a
// crash-consistent point on the primary disk.
const DefaultReverseTagInterval = 10 * time.Second

// Reprotect starts the reverse replication of sv's failover volume to the
// master target req.To. Its first sync copies only the blocks that may
// differ between the failover volume and the primary disk, the union of
//
//	(a) the blocks written on the failover volume (its overlay),
//	(b) the ranges the site applied after the failover point (the
//	    replica's ChangedSince; the whole volume on a target without it),
//	(c) the primary volume's dirty regions (its bitmap: what it may have
//	    written and never shipped),
//
// and with req.Verify only those of them whose SHA-256 differs from the
// primary disk's. req.Full copies every block. When the primary has
// writes the site never acknowledged, they are rolled back, which needs
// req.Force. The failover is committed: its point can no longer change.
func (m *Manager) Reprotect(ctx context.Context, sv pipeline.SiteVolume, req Request) (pipeline.RecoveryState, error) {
	info := sv.Info()
	if req.To == "" {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: reprotect needs the master target (--to https://HOST:PORT)", pipeline.ErrPermanent)
	}
	if req.Verify && req.Full {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: --verify narrows what is sent and --full sends everything: give one", pipeline.ErrPermanent)
	}
	if m.ReverseTLS == nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: this server has no identity for reverse replication", pipeline.ErrPermanent)
	}
	if err := m.begin(ctx, info.ID); err != nil {
		return pipeline.RecoveryState{}, err
	}
	defer m.end(info.ID)
	r := m.get(info.ID, pipeline.RecoveryFailover)
	if r == nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: volume %s is not failed over; reprotect replicates a failover volume back "+
			"(lifeboat failover start %s first)", pipeline.ErrRecoveryState, volName(info), volName(info))
	}
	st := m.status(r)
	if st.Error != "" || r.vol == nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: the failover volume of %s is not served (%s)", pipeline.ErrRecoveryState, volName(info), st.Error)
	}
	if st.Reprotect != nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: %s is already reprotected to %s (since %s)", pipeline.ErrRecoveryState,
			volName(info), st.Reprotect.To, st.Reprotect.Since.UTC().Format(time.RFC3339))
	}
	client, err := m.masterClient(req.To)
	if err != nil {
		return pipeline.RecoveryState{}, err
	}
	pv, err := client.Volume(ctx, info.ID)
	if err != nil {
		return pipeline.RecoveryState{}, fmt.Errorf("reprotect %s: %w", volName(info), err)
	}
	if pv.Info.Size != info.Size {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: the primary volume %s at %s is %d bytes and the failover volume %d bytes: "+
			"reverse replication needs a volume of the same size", pipeline.ErrPermanent, pv.Info.Name, req.To, pv.Info.Size, info.Size)
	}
	if pv.Adopted != nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: the master target handed %s back to its agent already (a failback); "+
			"start the master target with a new --data-dir for a new reprotect", pipeline.ErrRecoveryState, pv.Info.Name)
	}
	if u := pv.Unshipped; u.Bytes > 0 && !req.Force {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: the primary volume %s has %d bytes of writes (%d records, seq %d..%d) the site never "+
			"received; failing back rolls them back to the failover volume's content: add --force to go on",
			pipeline.ErrRecoveryState, pv.Info.Name, u.Bytes, u.Records, u.FirstSeq, u.LastSeq)
	}
	m.step(info, "reprotect: finding what may differ from the primary volume")
	cands, err := m.candidates(ctx, sv, r, pv, req.Full)
	if err != nil {
		return pipeline.RecoveryState{}, err
	}
	skip, err := m.skipper(ctx, client, r, info, cands, req.Verify)
	if err != nil {
		return pipeline.RecoveryState{}, err
	}
	rv := &reverse{}
	rv.firstSync.Store(true)
	r.vol.ResyncSkip = rv.onlyFirstSync(skip)
	m.mu.Lock()
	committed := r.state.Committed
	r.state.Committed = true
	r.state.Reprotect = &pipeline.ReprotectState{To: req.To, Since: m.now().UTC(), Verify: req.Verify, Full: req.Full,
		CandidateBytes: cands.bytes, RolledBackBytes: pv.Unshipped.Bytes}
	m.mu.Unlock()
	// The primary gets the blocks of the journal so far from the resync.
	if _, err := m.dropJournal(r, toTracker(cands.ranges), "reprotect to "+req.To); err != nil {
		m.mu.Lock()
		r.state.Committed, r.state.Reprotect = committed, nil
		m.mu.Unlock()
		return pipeline.RecoveryState{}, fmt.Errorf("reprotect %s: %w", volName(info), err)
	}
	m.startReverse(r, rv, client)
	m.logger().Info("reprotect started", "volume", volName(info), "to", req.To, "candidate_bytes", cands.bytes,
		"verify", req.Verify, "full", req.Full, "rolled_back_bytes", pv.Unshipped.Bytes)
	return m.status(r), nil
}

// masterClient is an HTTP client of the master target at url with the
// site's identity.
func (m *Manager) masterClient(url string) (*failback.Client, error) {
	conf, err := m.ReverseTLS()
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true}, Timeout: 10 * time.Minute}
	return &failback.Client{URL: url, HTTP: hc}, nil
}

// blockSet is one bit per HashBlock of a volume.
type blockSet []uint64

func newBlockSet(size int64) blockSet {
	return make(blockSet, (blockCount(size, failback.HashBlock)+63)/64)
}

func (s blockSet) add(rg targets.Range) {
	for b := rg.Off / failback.HashBlock; b < blockCount(rg.Off+rg.Len, failback.HashBlock); b++ {
		s[b/64] |= 1 << (b % 64)
	}
}

func (s blockSet) has(off int64) bool {
	b := off / failback.HashBlock
	return s[b/64]&(1<<(b%64)) != 0
}

// ranges merges the set into block-aligned ranges clamped to size.
func (s blockSet) ranges(size int64) []targets.Range {
	var out []targets.Range
	n := blockCount(size, failback.HashBlock)
	for b := int64(0); b < n; b++ {
		if !s.has(b * failback.HashBlock) {
			continue
		}
		e := b + 1
		for e < n && s.has(e*failback.HashBlock) {
			e++
		}
		off := b * failback.HashBlock
		out = append(out, targets.Range{Off: off, Len: min(e*failback.HashBlock, size) - off})
		b = e
	}
	return out
}

// candidateSet is what a reprotect's first sync considers.
type candidateSet struct {
	set    blockSet
	ranges []targets.Range
	bytes  int64
}

// candidates is the union (a) ∪ (b) ∪ (c) of Reprotect, or every block.
func (m *Manager) candidates(ctx context.Context, sv pipeline.SiteVolume, r *recovery, pv failback.Volume, full bool) (candidateSet, error) {
	size := sv.Info().Size
	set := newBlockSet(size)
	if full {
		set.add(targets.Range{Off: 0, Len: size})
	} else {
		for _, rg := range r.view.WrittenRanges() {
			set.add(rg)
		}
		changed, err := changedSince(ctx, sv, r.state.Point.Seq)
		if err != nil {
			return candidateSet{}, err
		}
		for _, rg := range changed {
			set.add(rg)
		}
		for _, rg := range pv.Unshipped.Dirty {
			set.add(rg)
		}
	}
	c := candidateSet{set: set, ranges: set.ranges(size)}
	for _, rg := range c.ranges {
		c.bytes += rg.Len
	}
	return c, nil
}

// changedSince is where sv's replica may differ from point seq, once the
// spool is applied: the whole volume when its target cannot tell.
func changedSince(ctx context.Context, sv pipeline.SiteVolume, seq uint64) ([]targets.Range, error) {
	if err := sv.Drain(ctx, nil); err != nil {
		return nil, err
	}
	cl, ok := sv.Replica().(targets.ChangeLister)
	if !ok {
		return []targets.Range{{Off: 0, Len: sv.Info().Size}}, nil
	}
	rs, err := cl.ChangedSince(ctx, seq)
	if errors.Is(err, errors.ErrUnsupported) {
		return []targets.Range{{Off: 0, Len: sv.Info().Size}}, nil
	}
	return rs, err
}

// skipper is the failover volume's ResyncSkip. A block is skipped when it
// is outside the candidates and was not written on the failover volume
// (its overlay is read at the call: a write since the candidates were
// found, while journaling was suspended, is copied); with verify, a
// candidate is skipped when the primary disk's hash of it, read now, is
// its own.
func (m *Manager) skipper(ctx context.Context, client *failback.Client, r *recovery, info targets.VolumeInfo, c candidateSet, verify bool) (func(int64, []byte) bool, error) {
	view := r.view
	if !verify {
		return func(off int64, _ []byte) bool { return !c.set.has(off) && !view.HasWritten(off) }, nil
	}
	m.step(info, "reprotect: comparing %s of candidate blocks with the primary volume", mib(c.bytes))
	hashes, err := client.Hashes(ctx, info.ID, failback.HashRequest{Block: failback.HashBlock, Ranges: c.ranges})
	if err != nil {
		return nil, fmt.Errorf("reprotect %s: %w", volName(info), err)
	}
	remote := make(map[int64][failback.HashSize]byte, len(hashes)/failback.HashSize)
	i := 0
	for _, rg := range c.ranges {
		for off := rg.Off; off < rg.Off+rg.Len; off += failback.HashBlock {
			remote[off] = [failback.HashSize]byte(hashes[i : i+failback.HashSize])
			i += failback.HashSize
		}
	}
	return func(off int64, b []byte) bool {
		h, ok := remote[off]
		if !ok {
			return !c.set.has(off) && !view.HasWritten(off)
		}
		sum := sha256.Sum256(b)
		return [failback.HashSize]byte(sum[:failback.HashSize]) == h
	}, nil
}

func toTracker(rs []targets.Range) []tracker.Range {
	out := make([]tracker.Range, len(rs))
	for i, r := range rs {
		out[i] = tracker.Range{Off: r.Off, Len: r.Len}
	}
	return out
}
