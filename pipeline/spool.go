package pipeline

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"

	"lifeboat/hrl"
	"lifeboat/targets"
)

// spool keeps received segments durably until they are applied. Layout:
//
//	DIR/<volume id>/volume.json                  the volume's name and geometry
//	DIR/<volume id>/<first>-<last>.hrl           a segment, byte for byte as the agent sealed it
//
// A segment is written to a temporary name, fsynced, renamed and the
// directory fsynced before the server acknowledges it: once the agent has
// an acknowledgement it deletes its copy.
type spool struct {
	fs  hrl.FS
	dir string
}

// spooledSeg is one segment waiting in the spool.
type spooledSeg struct {
	path       string
	generation uint64
	first      uint64
	last       uint64
	size       int64
	mem        *keptBuf  // the segment's verified receive buffer, if kept (keep.go)
	spooledAt  time.Time // when put, or listed at Open: apply lag (metrics.go)
}

const (
	volumeMetaName = "volume.json"
	spoolExt       = ".hrl"
	tmpExt         = ".tmp"
)

func spoolName(first, last uint64) string { return fmt.Sprintf("%016x-%016x%s", first, last, spoolExt) }

func parseSpoolName(name string) (first, last uint64, ok bool) {
	if !strings.HasSuffix(name, spoolExt) || len(name) != 33+len(spoolExt) {
		return 0, 0, false
	}
	_, err := fmt.Sscanf(name[:33], "%016x-%016x", &first, &last)
	return first, last, err == nil && first <= last+1
}

func (s *spool) volDir(id string) string { return filepath.Join(s.dir, id) }

// volumes returns the ids of the volumes with a spool directory (their
// volume.json may be damaged: loadInfo says).
func (s *spool) volumes() ([]string, error) {
	if err := s.fs.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	names, err := s.fs.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var ids []string
	for _, n := range names {
		if _, err := uuid.Parse(n); err == nil && len(n) == 36 {
			ids = append(ids, n)
		}
	}
	return ids, nil
}

// saveInfo records a volume's name and geometry (atomically).
func (s *spool) saveInfo(info targets.VolumeInfo) error {
	dir := s.volDir(info.ID)
	if err := s.fs.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	return s.writeDurably(dir, volumeMetaName, b)
}

func (s *spool) loadInfo(id string) (targets.VolumeInfo, error) {
	var info targets.VolumeInfo
	f, err := s.fs.OpenFile(filepath.Join(s.volDir(id), volumeMetaName), os.O_RDONLY, 0)
	if err != nil {
		return info, err
	}
	defer f.Close()
	n, err := f.Size()
	if err != nil {
		return info, err
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return info, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("spool %s: %w", id, err)
	}
	return info, nil
}

// put stores a verified segment durably.
func (s *spool) put(id string, seg spooledSeg, data []byte) (spooledSeg, error) {
	dir := s.volDir(id)
	name := spoolName(seg.first, seg.last)
	if err := s.writeDurably(dir, name, data); err != nil {
		return seg, err
	}
	seg.path = filepath.Join(dir, name)
	seg.size = int64(len(data))
	seg.spooledAt = time.Now()
	return seg, nil
}

// writeDurably writes name in dir through a temporary file: data fsynced,
// renamed, directory fsynced.
func (s *spool) writeDurably(dir, name string, data []byte) error {
	if err := hrl.WriteFileDurably(s.fs, dir, name, data); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}

// list returns a volume's spooled segments in seq order, reading each
// header for its generation, and removes temporary files left by a crash.
func (s *spool) list(id string) ([]spooledSeg, error) {
	dir := s.volDir(id)
	names, err := s.fs.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var segs []spooledSeg
	for _, n := range names {
		if strings.HasSuffix(n, tmpExt) {
			s.fs.Remove(filepath.Join(dir, n))
			continue
		}
		first, last, ok := parseSpoolName(n)
		if !ok {
			continue
		}
		seg := spooledSeg{path: filepath.Join(dir, n), first: first, last: last, spooledAt: time.Now()}
		if seg.generation, seg.size, err = s.header(seg.path); err != nil {
			return nil, err
		}
		segs = append(segs, seg)
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].first < segs[j].first })
	return segs, nil
}

func (s *spool) header(path string) (gen uint64, size int64, err error) {
	f, err := s.fs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	if size, err = f.Size(); err != nil {
		return 0, 0, fmt.Errorf("spool: %w", err)
	}
	var b [hrl.HeaderSize]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		return 0, 0, fmt.Errorf("spool %s: %w", path, err)
	}
	h, err := hrl.UnmarshalHeader(b[:])
	if err != nil {
		return 0, 0, fmt.Errorf("spool %s: %w", path, err)
	}
	return h.Generation, size, nil
}

// read loads a spooled segment into buf (grown as needed).
func (s *spool) read(seg spooledSeg, buf []byte) ([]byte, error) {
	f, err := s.fs.OpenFile(seg.path, os.O_RDONLY, 0)
	if err != nil {
		return buf, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	if int64(cap(buf)) < seg.size {
		buf = make([]byte, seg.size)
	}
	buf = buf[:seg.size]
	if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return buf, fmt.Errorf("spool %s: %w", seg.path, err)
	}
	return buf, nil
}

// remove deletes an applied segment. Not synced: a segment found again
// after a crash is at or below the applied seq and is removed then.
func (s *spool) remove(seg spooledSeg) error {
	if err := s.fs.Remove(seg.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}
