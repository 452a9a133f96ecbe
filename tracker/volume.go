// Package tracker is the one interception point of the data path: every
// change to a protected volume goes through Volume, which journals it (hrl),
// writes the backing store and keeps a persisted dirty-region bitmap.
package tracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/uuid"

	"lifeboat/hrl"
)

// Defaults.
const (
	DefaultRegionSize         = 64 << 10
	DefaultBlockSize          = hrl.DefaultBlockSize
	DefaultSegmentBytes       = 32 << 20
	DefaultSegmentAge         = 2 * time.Second
	DefaultCheckpointInterval = 5 * time.Second
)

// Errors of this package.
var (
	ErrOutOfRange = errors.New("request outside the volume")
	ErrClosed     = fmt.Errorf("volume closed: %w", os.ErrClosed)
	ErrResync     = errors.New("dirty regions need a resync before a consistent recovery point can be taken")
	ErrAckOrder   = errors.New("ack out of order: only the oldest sealed segment can be acknowledged")
	ErrLocked     = errors.New("journal directory is in use by another process")
)

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
// makes both durable.
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
	Logger             *slog.Logger

	backing  hrl.File
	size     int64
	bitmap   *Bitmap
	locks    rangeLock
	bufs     sync.Pool
	jreqs    chan *journalReq
	jmu      sync.Mutex // held while a batch (or an inline append) is journaled
	jreqPool sync.Pool

	mu         sync.Mutex // journal, segment lists, state
	w          *hrl.Writer
	win        *hrl.Window
	st         state
	touched    map[int64]uint64 // region -> last seq that changed it
	curRegion  []int64          // regions first touched by the open segment
	freeRegion []int64          // an acknowledged segment's region list, for reuse
	wbuf       hrl.Buffers      // the segment writers' scratch space, reused
	sealing    []*pendingSeg    // handed to the sealer, oldest first
	sealed     []sealedSeg      // sealed, not acknowledged, oldest first
	sealCond   sync.Cond
	changed    chan struct{} // closed and replaced when sealed changes
	closed     bool
	clearable  []int64 // regions whose changes are all acknowledged, to clear at the next checkpoint
	resumeSeq  uint64  // next seq when journaling resumes after bitmap mode
	acked      uint64  // last acknowledged seq; seqs never go back below it
	ackFile    *ackedFile
	ackMu      sync.Mutex // serialises Ack
	sealBroken bool       // a seal failed: later segments are not offered until a new generation

	done   chan struct{}
	wg     sync.WaitGroup
	unlock func()
}

type sealedSeg struct {
	info    hrl.SegmentInfo
	regions []int64
}

type pendingSeg struct {
	w       *hrl.Writer
	regions []int64
	done    chan struct{}
	err     error
	started bool
}

// NewVolume returns a Volume with default settings.
func NewVolume(path, journalDir string) *Volume {
	return &Volume{Path: path, JournalDir: journalDir, FS: hrl.OSFS{}, BlockSize: DefaultBlockSize,
		RegionSize: DefaultRegionSize, SegmentBytes: DefaultSegmentBytes, SegmentAge: DefaultSegmentAge,
		Dedupe: true, DedupeBlocks: hrl.DefaultDedupeBlocks, CheckpointInterval: DefaultCheckpointInterval}
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
	if v.SegmentBytes < 1<<16 {
		return fmt.Errorf("segment size %d is below the 64 KiB minimum", v.SegmentBytes)
	}
	return nil
}

// Open opens the backing store and the journal directory, recovering from a
// crash if needed: a torn journal tail is truncated, the newest segment
// sealed, and the sealed segments are offered to the consumer again.
func (v *Volume) Open(ctx context.Context) error {
	if err := v.checkConfig(); err != nil {
		return err
	}
	if err := v.FS.MkdirAll(v.JournalDir, 0o755); err != nil {
		return fmt.Errorf("journal directory: %w", err)
	}
	unlock, err := lockDir(v.FS, v.JournalDir)
	if err != nil {
		return err
	}
	v.unlock = unlock
	v.sealCond.L = &v.mu
	if err := v.open(); err != nil {
		v.closeFiles()
		return err
	}
	v.done = make(chan struct{})
	v.changed = make(chan struct{})
	v.startJournaler()
	v.wg.Add(1)
	go v.sealer()
	v.wg.Add(1)
	go v.background()
	return nil
}

func (v *Volume) open() error {
	f, err := v.FS.OpenFile(v.Path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open backing store: %w", err)
	}
	v.backing = f
	if v.size, err = f.Size(); err != nil {
		return fmt.Errorf("size of %s: %w", v.Path, err)
	}
	if v.size%512 != 0 {
		return fmt.Errorf("%s is %d bytes, not a multiple of 512", v.Path, v.size)
	}
	st, found, err := loadState(v.FS, v.JournalDir)
	if err != nil {
		return err
	}
	if !found {
		st = state{VolumeID: uuid.NewString(), Generation: 1, BlockSize: v.BlockSize, RegionSize: v.RegionSize, Mode: ModeJournal}
	} else if st.BlockSize != v.BlockSize {
		return fmt.Errorf("journal %s was written with block size %d, not %d", v.JournalDir, st.BlockSize, v.BlockSize)
	}
	st.RegionSize = v.RegionSize
	v.st = st
	bm, reason, err := openBitmap(v.FS, filepath.Join(v.JournalDir, bitmapName), v.RegionSize, v.size)
	if err != nil {
		return err
	}
	v.bitmap = bm
	if reason != "" {
		v.logger().Info("dirty bitmap initialised", "volume", v.Path, "reason", reason, "dirty_regions", bm.Dirty())
	}
	if v.Dedupe {
		v.win = hrl.NewWindow(v.DedupeBlocks)
	}
	v.touched = map[int64]uint64{}
	if v.ackFile, v.acked, err = openAcked(v.FS, v.JournalDir); err != nil {
		return err
	}
	next, err := v.recoverJournal()
	if err != nil {
		return err
	}
	if v.st.Running && v.st.Resync == "" {
		// Writes that reached the backing store after the last durable
		// journal record may be missing from the journal: only a resync of
		// the dirty regions makes the replica whole again.
		v.st.Resync = "unclean shutdown: writes after the last flush may be missing from the journal"
		v.logger().Warn("volume was not closed cleanly; dirty regions need a resync before the next recovery point",
			"volume", v.Path, "dirty_regions", v.bitmap.Dirty())
	}
	v.st.Running = true
	if err := saveState(v.FS, v.JournalDir, v.st); err != nil {
		return err
	}
	v.resumeSeq = next
	if v.st.Mode == ModeJournal {
		if err := v.startSegment(next); err != nil {
			// The protected server keeps its disk: track dirty regions
			// until the journal can be written again.
			v.suspendLocked(fmt.Errorf("start segment %d: %w", next, err))
		}
		return nil
	}
	v.logger().Warn("volume is in bitmap mode; journaling stays suspended until a resync", "volume", v.Path, "reason", v.st.ModeReason)
	return nil
}

// recoverJournal verifies the segments on disk, rebuilds the region
// bookkeeping for the unacknowledged ones and returns the next seq. A
// journal that cannot be trusted is moved aside and a new generation begins;
// the bitmap still covers every region those segments touched.
func (v *Volume) recoverJournal() (uint64, error) {
	rec, err := hrl.Recover(v.FS, v.JournalDir)
	if err != nil {
		if !errors.Is(err, hrl.ErrCorrupt) && !errors.Is(err, hrl.ErrGap) {
			return 0, err
		}
		return v.quarantine(err)
	}
	if rec.Truncated != nil {
		v.logger().Warn("journal torn tail truncated after a crash", "volume", v.Path, "file", rec.Truncated.File,
			"offset", rec.Truncated.Offset, "last_good_seq", rec.Truncated.Seq, "reason", rec.Truncated.Reason)
	}
	for _, path := range rec.Removed {
		v.logger().Warn("removed an unsealed journal segment that never became durable", "file", path)
	}
	next := v.acked + 1
	for _, info := range rec.Segments {
		if info.Count == 0 || info.LastSeq <= v.acked {
			// Empty, or acknowledged before a crash interrupted its deletion.
			if err := v.FS.Remove(info.Path); err != nil {
				return 0, fmt.Errorf("remove acknowledged segment: %w", err)
			}
			continue
		}
		if len(v.sealed) == 0 && info.FirstSeq != v.acked+1 {
			return v.quarantine(fmt.Errorf("%w: acknowledged through seq %d but the oldest segment %s starts at %d",
				hrl.ErrGap, v.acked, filepath.Base(info.Path), info.FirstSeq))
		}
		if info.Generation > v.st.Generation {
			v.st.Generation = info.Generation
		}
		regions, err := v.segmentRegions(info)
		if err != nil {
			return 0, err
		}
		v.sealed = append(v.sealed, sealedSeg{info: info, regions: regions})
		next = info.LastSeq + 1
	}
	return next, nil
}

// segmentRegions lists the regions a segment's records change and records
// them as touched by its seqs.
func (v *Volume) segmentRegions(info hrl.SegmentInfo) ([]int64, error) {
	f, err := v.FS.OpenFile(info.Path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rd, err := hrl.NewReader(f, info.Size, info.Path)
	if err != nil {
		return nil, err
	}
	var regions []int64
	for {
		rec, err := rd.Next()
		if err != nil {
			if rd.Sealed() {
				return regions, nil
			}
			return nil, err
		}
		if rec.Length == 0 {
			continue
		}
		r0, r1 := v.bitmap.regions(int64(rec.Offset), int64(rec.Length))
		for r := r0; r < r1; r++ {
			if _, ok := v.touched[r]; !ok || v.touched[r] < info.FirstSeq {
				regions = append(regions, r)
			}
			v.touched[r] = rec.Seq
		}
	}
}

// quarantine moves every segment aside after corruption or a gap and starts
// a new generation. Nothing is lost: the regions those segments changed are
// still dirty in the bitmap, and a resync ships them.
func (v *Volume) quarantine(cause error) (uint64, error) {
	seqs, err := hrl.ListSegments(v.FS, v.JournalDir)
	if err != nil {
		return 0, err
	}
	qdir := filepath.Join(v.JournalDir, "quarantine", time.Now().UTC().Format("20060102T150405Z"))
	if err := v.FS.MkdirAll(qdir, 0o755); err != nil {
		return 0, err
	}
	next := v.acked + 1
	for _, s := range seqs {
		name := hrl.SegmentName(s)
		if err := v.FS.Rename(filepath.Join(v.JournalDir, name), filepath.Join(qdir, name)); err != nil {
			return 0, fmt.Errorf("quarantine %s: %w", name, err)
		}
		// Seqs must never be reused, and a damaged segment's last seq is
		// unknown: a record takes at least a record header, which bounds it.
		if f, err := v.FS.OpenFile(filepath.Join(qdir, name), os.O_RDONLY, 0); err == nil {
			if size, err := f.Size(); err == nil {
				next = max(next, s+uint64(size)/hrl.RecordHeaderSize+1)
			}
			f.Close()
		}
	}
	if err := v.FS.SyncDir(v.JournalDir); err != nil {
		return 0, err
	}
	if err := v.ackFile.store(next - 1); err != nil {
		return 0, err
	}
	v.st.Generation++
	v.st.Resync = fmt.Sprintf("journal could not be trusted (%v); segments moved to %s", cause, qdir)
	clear(v.touched)
	v.sealed = nil
	v.logger().Error("journal quarantined, new generation; dirty regions need a resync",
		"volume", v.Path, "generation", v.st.Generation, "cause", cause, "moved_to", qdir)
	v.acked = next - 1
	return next, nil
}

// Size returns the volume size in bytes.
func (v *Volume) Size() int64 { return v.size }

// blockSize is the journal block size.
func (v *Volume) blockSize() int64 { return int64(v.BlockSize) }

// VolumeID identifies the volume across restarts.
func (v *Volume) VolumeID() string { return v.st.VolumeID }

// Bitmap exposes the dirty bitmap (read-only use).
func (v *Volume) Bitmap() *Bitmap { return v.bitmap }
