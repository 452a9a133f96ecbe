// Package tracker is the one interception point of the data path: every
// change to a protected volume goes through Volume, which journals it (hrl),
// writes the backing store and keeps a persisted dirty-region bitmap.
//
// The bitmap's rule: it never under-reports after a crash. A region's bit
// is set and synced before the first write to it since it was last clean
// reaches the journal or the backing store (Bitmap.Mark); that sync is the
// only one a write can cost, and only when its region was clean. A bit is
// cleared only by a checkpoint, after a sync of the backing store, once
// every change to the region was acknowledged by the consumer and none came
// since, and only while the dirty regions exceed the hot set (HotSetBytes):
// then the least recently acknowledged regions idle for at least
// ClearDelay are cleared, down to the hot set. This is DRBD's activity log
// and md's write-intent bitmap: a working set that fits in the hot set
// keeps its bits and costs no bitmap sync in steady state; the price is
// that after a crash the resync copies the hot set again, at most
// HotSetBytes beyond what was not yet acknowledged. Regions acknowledged
// while a resync is pending are cleared at the next checkpoint whatever
// the hot set (an initial replication resumes after a restart from what
// was cleared), and Close clears every acknowledged region.
//
// A resync's copy may be held in memory instead of the journal directory
// (Volume.CopyMemory); copy.go has its continuity and crash rules.
package tracker

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"lifeboat/hrl"
)

// Defaults.
const (
	DefaultRegionSize         = 64 << 10
	DefaultBlockSize          = hrl.DefaultBlockSize
	DefaultSegmentBytes       = 32 << 20
	DefaultSegmentAge         = 2 * time.Second
	DefaultCheckpointInterval = 5 * time.Second
	DefaultClearDelay         = 10 * time.Second
	DefaultHotSetBytes        = 1 << 30
	DefaultCopyMemory         = 32 << 20 // for a volume with a shipper; NewVolume leaves CopyMemory 0
)

// Errors of this package.
var (
	ErrOutOfRange = errors.New("request outside the volume")
	ErrClosed     = fmt.Errorf("volume closed: %w", os.ErrClosed)
	ErrResync     = errors.New("dirty regions need a resync before a consistent recovery point can be taken")
	ErrAckOrder   = errors.New("ack out of order: only the oldest sealed segment can be acknowledged")
	ErrLocked     = errors.New("journal directory is in use by another process")
	// ErrReadOnly is a write to a volume made read-only (a planned
	// failover moved it to the recovery site); it wraps EPERM.
	ErrReadOnly = errors.New("volume is read-only: it was failed over to the recovery site")
	// ErrJournalQuota is the cause (in Status.ModeReason) of a switch to
	// bitmap mode because the unacknowledged journal reached JournalQuota.
	ErrJournalQuota = errors.New("journal quota exceeded")
)

// MinJournalQuota is the smallest JournalQuota accepted (other than 0).
const MinJournalQuota = 64 << 10

// initialSyncReason is Status.Resync of a volume opened for the first time
// with InitialSync set.
const initialSyncReason = "initial replication: the replica has none of this volume yet"

// Volume wraps a backing file or block device. Set the exported fields
// after NewVolume and before Open.
//
// Write path (WriteAt, WriteZeroes, Trim), per request:
//  1. the 4 KiB blocks the request touches are locked, so overlapping
//     requests reach the journal and the backing store in the same order;
//  2. the dirty bitmap is marked, and synced when a region turns dirty;
//  3. a record is appended to the open journal segment (an unaligned write
//     is widened to whole blocks with the surrounding backing bytes);
//  4. the backing store is written.
//
// The request is acknowledged after 3 and 4 reached the page cache; Flush
// makes both durable, except a record in a segment held in memory while a
// resync copies the volume (CopyMemory, copy.go): its region's dirty bit,
// synced in 2, stands for it until the consumer acknowledges it.
//
// When a record cannot be journaled (the journal disk fails, a seal fails,
// or JournalQuota is reached) the volume switches to bitmap mode: writes go
// on, only the bitmap tracks them, and Resync later journals the dirty
// regions in a new generation. Until then Tag refuses (ErrResync).
//
// A dirty region whose content may be missing from the journal (written in
// bitmap mode, lost with a failed batch or seal, or dirty when a resync
// became necessary) is pinned: acknowledgements never clear it, only a
// Resync that journals it does. So the bitmap never under-reports what the
// replica lacks.
type Volume struct {
	Path         string        // backing file or block device
	JournalDir   string        // segments, bitmap and state of this volume
	FS           hrl.FS        // default hrl.OSFS
	BlockSize    int           // journal block size, default 4096
	RegionSize   int64         // bytes per dirty bit, default 64 KiB
	SegmentBytes int64         // seal a segment at this size
	SegmentAge   time.Duration // seal a non-empty segment at this age; 0 disables
	Dedupe       bool          // REF records for repeated blocks (default true)
	DedupeBlocks int           // dedupe window size in blocks
	// CheckpointInterval is how often acknowledged regions are cleared in
	// the persisted bitmap without a Flush; 0 leaves it to Flush and Close.
	CheckpointInterval time.Duration
	// ClearDelay is how long an acknowledged region stays dirty in the
	// persisted bitmap at least before a checkpoint may clear it (the rule
	// of md's write-intent bitmap): a region written again within it finds
	// its bit still set and costs no bitmap sync. 0: no minimum.
	ClearDelay time.Duration
	// HotSetBytes is how much of the volume, in regions, may stay dirty in
	// the persisted bitmap after its acknowledgement (DRBD's activity log):
	// checkpoints clear acknowledged regions only beyond it, least
	// recently acknowledged first. A write to a region still in the hot
	// set costs no bitmap sync; after a crash, a resync copies the hot set
	// again. 0 clears every acknowledged region once ClearDelay has passed.
	HotSetBytes int64
	// JournalQuota bounds the unacknowledged journal: the bytes of the
	// segments sealed (or being sealed) and not yet acknowledged plus the
	// open segment (Status.JournalBytes). A write whose records could take
	// it above the quota is not journaled; the volume switches to bitmap
	// mode with a reason wrapping ErrJournalQuota, and the write succeeds.
	// Resync never exceeds the quota: it seals what it journaled and waits
	// for acknowledgements, and uses chunks small enough for the quota.
	// Sizes are the segment files' logical sizes (preallocated space is not
	// counted). 0 means no quota; otherwise at least MinJournalQuota.
	JournalQuota int64
	// InitialSync makes a volume opened for the first time (no volume.json
	// in JournalDir) need a Resync of every region before Tag succeeds,
	// because the replica has nothing of it yet. Ignored for a volume that
	// was opened before.
	InitialSync bool
	// CleanStart makes a volume opened for the first time (no volume.json
	// and no dirty bitmap in JournalDir) start with no dirty region: its
	// content is known elsewhere at that moment (a failover volume over a
	// recovery point, whose failback sends what changed since the point).
	// Ignored for a volume opened before, and with InitialSync.
	CleanStart bool
	// CopyMemory, when positive, lets a Resync (an initial replication, a
	// full resync) hold the segments it writes in memory instead of the
	// journal directory, at most about this many bytes of them not yet
	// acknowledged; it waits for the consumer beyond that (copy.go). Set
	// it only with a consumer that acknowledges (a shipper): without one,
	// Resync would wait forever. 0: resyncs are journaled to disk. At
	// least MinCopyMemory otherwise.
	CopyMemory int64
	// ID is the volume id of a volume opened for the first time (no
	// volume.json); empty: a new UUID. A failover volume takes the id of
	// the site volume it recovers, so that reverse replication ships its
	// journal under the primary volume's id. Ignored afterwards.
	ID string
	// ResyncSkip, when set, is asked for each block a Resync reads: true
	// leaves it out of the journal, because the consumer's copy already
	// holds these bytes (a reprotect that compared block hashes with the
	// primary disk, or a block outside what may differ). A chunk whose
	// blocks are all skipped gets no record and its regions count as
	// copied. It is called under the block's range lock; it must not
	// block for long.
	ResyncSkip func(off int64, block []byte) bool
	Logger     *slog.Logger

	backing  hrl.File
	size     int64
	bitmap   *Bitmap
	locks    rangeLock
	bufs     sync.Pool
	jreqs    chan *journalReq
	jmu      sync.Mutex // held while a batch (or an inline append) is journaled
	jreqPool sync.Pool

	mu           sync.Mutex // journal, segment lists, state
	w            *hrl.Writer
	win          *hrl.Window
	st           state
	touched      map[int64]uint64 // region -> last seq that changed it
	curRegion    []int64          // regions first touched by the open segment
	freeRegion   []int64          // an acknowledged segment's region list, for reuse
	wbuf         hrl.Buffers      // the segment writers' scratch space, reused
	sealing      []*pendingSeg    // handed to the sealer, oldest first
	sealed       []sealedSeg      // sealed, not acknowledged, oldest first
	sealCond     sync.Cond
	changed      chan struct{} // closed and replaced when sealed changes
	closed       bool
	clearable    map[int64]clearCand // regions whose changes are all acknowledged, for checkpoint to clear (HotSetBytes, ClearDelay)
	copiedCands  int                 // of them, acknowledged by a resync (clear at the next checkpoint)
	ackN         uint64              // clearCand.n of the last one
	reacked      []*regionsSeen      // one per running checkpoint: regions acknowledged since it picked its candidates
	resumeSeq    uint64              // next seq when journaling resumes after bitmap mode
	acked        uint64              // last acknowledged seq; seqs never go back below it
	ackFile      *ackedFile
	ackedFiles   []string      // segments acknowledged since the last syncAcked, to delete after it (ackMu)
	ackMu        sync.Mutex    // serialises Ack, and Ack with Close closing the files; taken before mu
	sealBroken   bool          // a seal failed: later segments are not offered until a new generation
	closedBytes  int64         // bytes of the segments rolled and not yet acknowledged (sealing and sealed)
	freed        chan struct{} // closed and replaced when journal room may have become free, or the mode changed
	pinned       regionSet     // dirty regions only a resync may clear (see the type's doc)
	copied       regionSet     // regions last journaled by a resync: cleared at once when acknowledged, not kept hot
	unflushed    []span        // ranges of records that may still be in the writer's batch
	resyncMu     sync.Mutex    // one Resync at a time
	readOnly     atomic.Bool   // SetReadOnly
	writers      atomic.Int64  // writes, zeroes and trims in progress
	churn        churn         // bytes written and zeroed, for metrics (churn.go)
	mem          *memFS        // segments held in memory (copy.go)
	copying      bool          // a Resync with CopyMemory runs
	copyMode     bool          // segments opened now are memory segments
	wMem         bool          // the open segment is a memory segment
	suspendCause error         // of the last switch to bitmap mode

	done   chan struct{}
	wg     sync.WaitGroup
	unlock func()
}

type sealedSeg struct {
	info    hrl.SegmentInfo
	regions []int64
	mem     bool // held in memory (copy.go)
}

type pendingSeg struct {
	w       *hrl.Writer
	size    int64 // bytes when rolled, counted in closedBytes
	regions []int64
	done    chan struct{}
	err     error
	started bool
	mem     bool
}

// NewVolume returns a Volume with default settings.
func NewVolume(path, journalDir string) *Volume {
	return &Volume{Path: path, JournalDir: journalDir, FS: hrl.OSFS{}, BlockSize: DefaultBlockSize,
		RegionSize: DefaultRegionSize, SegmentBytes: DefaultSegmentBytes, SegmentAge: DefaultSegmentAge,
		Dedupe: true, DedupeBlocks: hrl.DefaultDedupeBlocks, CheckpointInterval: DefaultCheckpointInterval,
		ClearDelay: DefaultClearDelay, HotSetBytes: DefaultHotSetBytes}
}

func (v *Volume) logger() *slog.Logger {
	if v.Logger == nil {
		return slog.Default()
	}
	return v.Logger
}

func (v *Volume) checkConfig() error {
	switch {
	case v.FS == nil:
		v.FS = hrl.OSFS{}
	case v.Path == "" || v.JournalDir == "":
		return errors.New("volume needs a backing path and a journal directory")
	}
	if v.BlockSize < 512 || v.BlockSize&(v.BlockSize-1) != 0 {
		return fmt.Errorf("block size %d is not a power of two of at least 512", v.BlockSize)
	}
	if v.RegionSize < int64(v.BlockSize) || v.RegionSize%int64(v.BlockSize) != 0 {
		return fmt.Errorf("region size %d must be a multiple of the block size %d", v.RegionSize, v.BlockSize)
	}
	if v.HotSetBytes < 0 || v.ClearDelay < 0 {
		return fmt.Errorf("hot set %d bytes and clear delay %v must not be negative", v.HotSetBytes, v.ClearDelay)
	}
	if c := v.CopyMemory; c < 0 || c > 0 && c < MinCopyMemory {
		return fmt.Errorf("copy memory %d bytes: set 0 (resyncs journaled to disk) or at least %d", c, MinCopyMemory)
	}
	if v.SegmentBytes < 1<<16 {
		return fmt.Errorf("segment size %d is below the 64 KiB minimum", v.SegmentBytes)
	}
	if q := v.JournalQuota; q != 0 && (q < MinJournalQuota || v.resyncChunkBytes() < v.blockSize()) {
		return fmt.Errorf("journal quota %d is too small: set 0 (no quota) or at least %d bytes and room for a record of one %d-byte block",
			q, MinJournalQuota, v.BlockSize)
	}
	return nil
}

// Size returns the volume size in bytes.
func (v *Volume) Size() int64 { return v.size }

// blockSize is the journal block size.
func (v *Volume) blockSize() int64 { return int64(v.BlockSize) }

// VolumeID identifies the volume across restarts.
func (v *Volume) VolumeID() string { return v.st.VolumeID }

// Bitmap exposes the dirty bitmap (read-only use).
func (v *Volume) Bitmap() *Bitmap { return v.bitmap }
