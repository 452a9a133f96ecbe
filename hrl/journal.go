package hrl

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ErrGap is returned when consecutive segments do not continue each other's
// seq range or go back in generation: continuity cannot be proven.
var ErrGap = errors.New("journal gap")

// ListSegments returns the first seqs of the segment files in dir, ascending.
func ListSegments(fsys FS, dir string) ([]uint64, error) {
	names, err := fsys.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list journal %s: %w", dir, err)
	}
	var seqs []uint64
	for _, n := range names {
		if s, ok := ParseSegmentName(n); ok {
			seqs = append(seqs, s)
		}
	}
	return seqs, nil // names are sorted and fixed-width hex, so seqs are too
}

// ScanFile scans one segment file.
func ScanFile(fsys FS, path string) (SegmentInfo, error) {
	f, err := fsys.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return SegmentInfo{Path: path}, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return SegmentInfo{Path: path}, fmt.Errorf("size of %s: %w", path, err)
	}
	return Scan(f, size, path)
}

// CheckContinuity verifies that b continues a: same volume and block size,
// and either the same generation and the next seq, or a newer generation
// (which marks a break that a resync repaired) with a higher seq.
func CheckContinuity(a, b SegmentInfo) error {
	if a.VolumeID != b.VolumeID || a.BlockSize != b.BlockSize {
		return fmt.Errorf("%w: %s belongs to volume %x (block size %d), %s to volume %x (block size %d)", ErrGap,
			filepath.Base(a.Path), a.VolumeID, a.BlockSize, filepath.Base(b.Path), b.VolumeID, b.BlockSize)
	}
	if b.Generation == a.Generation && b.FirstSeq != a.LastSeq+1 || b.FirstSeq <= a.LastSeq {
		return fmt.Errorf("%w: %s ends at seq %d, %s starts at seq %d", ErrGap,
			filepath.Base(a.Path), a.LastSeq, filepath.Base(b.Path), b.FirstSeq)
	}
	if b.Generation < a.Generation {
		return fmt.Errorf("%w: %s has generation %d after generation %d", ErrGap,
			filepath.Base(b.Path), b.Generation, a.Generation)
	}
	return nil
}

// Plan is what Recover would do to a journal directory, found by Check
// without changing anything.
type Plan struct {
	// Segments are the segments kept, oldest first, as they are now; the
	// unsealed ones among them get sealed (after Truncate, for the one it
	// names).
	Segments []SegmentInfo
	// Truncate is the torn tail to cut off, if any.
	Truncate *TornError
	// Remove lists unsealed segments that never held anything durable that
	// continues the journal: a torn header, or after a torn tail.
	Remove []string
	// Gap is the break in continuity that ended the journal (CheckPrefix
	// only), and AfterGap the segments from it on, to be removed.
	Gap      error
	AfterGap []string
}

// Check verifies every segment in dir and the continuity between them, and
// says what Recover would do, without changing anything. Sealed segments are
// verified as they are. The segments that were still open when the writer
// stopped (a trailing run of unsealed ones: the one being sealed and the one
// being written) are cut at their first damaged record; an unsealed segment
// after such a cut, or with a torn header, is to be removed. Corruption of a
// sealed segment, a sealed segment after an unsealed one, and gaps are
// returned as errors wrapping ErrCorrupt or ErrGap.
func Check(fsys FS, dir string) (Plan, error) {
	return check(fsys, dir, false)
}

// CheckPrefix is Check for a journal whose continuity may break where
// records were never written to it (a tracker's segments held in memory
// and lost with the process): the first gap ends the journal, and the
// segments from it on are listed in AfterGap instead of failing the
// check. Corruption is still an error.
func CheckPrefix(fsys FS, dir string) (Plan, error) {
	return check(fsys, dir, true)
}

func check(fsys FS, dir string, stopAtGap bool) (Plan, error) {
	var plan Plan
	seqs, err := ListSegments(fsys, dir)
	if err != nil {
		return plan, err
	}
	inTail, cut := false, false
	for _, s := range seqs {
		path := filepath.Join(dir, SegmentName(s))
		if plan.Gap != nil {
			plan.AfterGap = append(plan.AfterGap, path)
			continue
		}
		info, err := ScanFile(fsys, path)
		var torn *TornError
		sealed := err == nil && info.Sealed
		switch {
		case sealed && inTail:
			return plan, &CorruptError{File: path, Offset: info.Size, Seq: info.LastSeq, Reason: "sealed segment after an unsealed one"}
		case err == nil && info.FirstSeq != s:
			return plan, &CorruptError{File: path, Reason: fmt.Sprintf("header says first seq %d, name says %d", info.FirstSeq, s)}
		case err == nil, errors.As(err, &torn):
		case errors.Is(err, ErrCorrupt) && info.Size == 0 && !footerAt(fsys, path):
			// The header was torn by a crash before its first sync.
			info, torn = SegmentInfo{Path: path}, &TornError{File: path, Reason: "segment header torn"}
		default:
			return plan, err
		}
		inTail = inTail || !sealed
		if cut || info.Size < HeaderSize {
			// Follows a cut (a gap), or never got a durable header.
			plan.Remove = append(plan.Remove, path)
			cut = true
			continue
		}
		if n := len(plan.Segments); n > 0 {
			if err := CheckContinuity(plan.Segments[n-1], info); err != nil {
				if !stopAtGap {
					return plan, err
				}
				plan.Gap, plan.AfterGap = err, []string{path}
				continue
			}
		}
		if torn != nil {
			plan.Truncate, cut = torn, true
		}
		plan.Segments = append(plan.Segments, info)
	}
	return plan, nil
}

// Recovery is what Recover found and did.
type Recovery struct {
	Segments  []SegmentInfo // every segment kept, oldest first, all sealed afterwards
	Truncated *TornError    // the torn tail that was cut off, if any
	Removed   []string      // unsealed segments dropped: header torn, or after a torn tail
	Gap       error         // RecoverPrefix: where continuity broke, if it did
	AfterGap  []string      // RecoverPrefix: the segments removed from the gap on
}

// Recover prepares the journal in dir for appending after a clean shutdown
// or a crash: it carries out the Plan of Check. Nothing is changed when
// Check returns an error.
func Recover(fsys FS, dir string) (Recovery, error) {
	plan, err := Check(fsys, dir)
	if err != nil {
		return Recovery{}, err
	}
	return recoverPlan(fsys, plan)
}

// RecoverPrefix is Recover after CheckPrefix: the segments after the first
// gap are removed (Recovery.Gap says where the journal broke). The caller
// must know why records can be missing and that what they changed is
// accounted for elsewhere (the tracker's dirty bitmap).
func RecoverPrefix(fsys FS, dir string) (Recovery, error) {
	plan, err := CheckPrefix(fsys, dir)
	if err != nil {
		return Recovery{}, err
	}
	return recoverPlan(fsys, plan)
}

func recoverPlan(fsys FS, plan Plan) (Recovery, error) {
	rec := Recovery{Truncated: plan.Truncate, Gap: plan.Gap}
	for _, path := range plan.AfterGap {
		if err := fsys.Remove(path); err != nil {
			return rec, fmt.Errorf("remove segment after a gap: %w", err)
		}
		rec.AfterGap = append(rec.AfterGap, path)
	}
	if len(plan.AfterGap) > 0 {
		if err := fsys.SyncDir(filepath.Dir(plan.AfterGap[0])); err != nil {
			return rec, err
		}
	}
	for _, path := range plan.Remove {
		if err := removeDurably(fsys, path); err != nil {
			return rec, err
		}
		rec.Removed = append(rec.Removed, path)
	}
	for _, info := range plan.Segments {
		if !info.Sealed {
			var err error
			if info, err = sealExisting(fsys, info.Path); err != nil {
				return rec, err
			}
		}
		rec.Segments = append(rec.Segments, info)
	}
	return rec, nil
}

// footerAt reports whether the file at path ends in a footer.
func footerAt(fsys FS, path string) bool {
	f, err := fsys.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return false
	}
	ok, err := hasFooter(f, size)
	return err == nil && ok
}

func removeDurably(fsys FS, path string) error {
	if err := fsys.Remove(path); err != nil {
		return fmt.Errorf("remove unsealed segment: %w", err)
	}
	return fsys.SyncDir(filepath.Dir(path))
}

// sealExisting truncates an unsealed segment after its last good record and
// appends the footer.
func sealExisting(fsys FS, path string) (SegmentInfo, error) {
	f, err := fsys.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return SegmentInfo{}, fmt.Errorf("reopen %s to seal it: %w", path, err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return SegmentInfo{}, err
	}
	rd, err := NewReader(f, size, path)
	if err != nil {
		return SegmentInfo{}, err
	}
	for err == nil {
		_, err = rd.Next()
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, ErrTornTail) {
		return SegmentInfo{}, err
	}
	if rd.Offset() != size {
		if err := f.Truncate(rd.Offset()); err != nil {
			return SegmentInfo{}, fmt.Errorf("truncate torn tail of %s at %d: %w", path, rd.Offset(), err)
		}
	}
	w := &Writer{fs: fsys, f: f, path: path, hdr: rd.Header, off: rd.Offset(), next: rd.next,
		count: rd.count, chain: rd.chain, created: rd.Header.Created}
	info, err := w.Seal()
	w.f = nil // closed by the defer
	return info, err
}
