package file

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/cespare/xxhash/v2"

	"lifeboat/hrl"
)

// An index file (<seq>.idx beside <seq>.undo) caches the index of a closed
// undo log so that Open need not read the log:
//
//	+----------+-----------+------------+-------+-------------------------+----------+
//	| "LBUIDX1"| point seq | log length | count | count x {block u64,     | xxhash64 |
//	|  + '\n'  |  u64      |  u64       |  u64  |  offset u64, length u32,| of all   |
//	|          |           |            |       |  flags u32} by block    | before   |
//	+----------+-----------+------------+-------+-------------------------+----------+
//
// It is a cache, never trusted blindly: Open uses it only when its checksum
// holds and the log length it names equals the length state.json records
// for the log (a log only grows, by merges, and every merge rewrites the
// index). Otherwise Open scans the log. It is written without fsync: a
// torn or lost index only costs a scan.
const (
	indexMagic     = "LBUIDX1\n"
	indexHead      = 32
	indexEntrySize = 24
)

func indexPath(logPath string) string { return strings.TrimSuffix(logPath, ".undo") + ".idx" }

// writeIndex saves the index of closed log u (best effort: a failure is
// logged, Open scans instead). An empty log needs none.
func (r *Replica) writeIndex(u *undoLog) {
	if u.size == 0 {
		return
	}
	b := make([]byte, indexHead, indexHead+len(u.sorted)*indexEntrySize+8)
	copy(b, indexMagic)
	binary.LittleEndian.PutUint64(b[8:], u.seq)
	binary.LittleEndian.PutUint64(b[16:], uint64(u.size))
	binary.LittleEndian.PutUint64(b[24:], uint64(len(u.sorted)))
	for _, e := range u.sorted {
		var flags uint32
		if e.zero {
			flags = flagZero
		}
		b = binary.LittleEndian.AppendUint64(b, uint64(e.block))
		b = binary.LittleEndian.AppendUint64(b, uint64(e.off))
		b = binary.LittleEndian.AppendUint32(b, uint32(e.n))
		b = binary.LittleEndian.AppendUint32(b, flags)
	}
	b = binary.LittleEndian.AppendUint64(b, xxhash.Sum64(b))
	path := indexPath(u.path)
	err := func() error {
		f, err := r.fs.OpenFile(path+".tmp", os.O_RDWR|os.O_CREATE|os.O_TRUNC, hrl.PrivateFile)
		if err != nil {
			return err
		}
		_, err = f.WriteAt(b, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		return r.fs.Rename(path+".tmp", path)
	}()
	if err != nil {
		r.log.Warn("saving an undo log index failed; the next open scans the log", "index", path, "err", err)
	}
}

// readIndex loads the cached index of u if it is intact and describes
// exactly length bytes of the log; ok is false otherwise.
func (r *Replica) readIndex(u *undoLog, length int64) (ok bool) {
	f, err := r.fs.OpenFile(indexPath(u.path), os.O_RDONLY, 0)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			r.log.Warn("undo log index unreadable; scanning the log", "log", u.path, "err", err)
		}
		return false
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil || size < indexHead+8 || (size-indexHead-8)%indexEntrySize != 0 {
		return false
	}
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return false
	}
	body := b[:size-8]
	if string(b[:8]) != indexMagic || binary.LittleEndian.Uint64(b[size-8:]) != xxhash.Sum64(body) ||
		binary.LittleEndian.Uint64(b[8:]) != u.seq || int64(binary.LittleEndian.Uint64(b[16:])) != length ||
		binary.LittleEndian.Uint64(b[24:]) != uint64((size-indexHead-8)/indexEntrySize) {
		return false
	}
	refs := make([]ref, 0, (size-indexHead-8)/indexEntrySize)
	for p := body[indexHead:]; len(p) > 0; p = p[indexEntrySize:] {
		e := ref{block: int64(binary.LittleEndian.Uint64(p)), off: int64(binary.LittleEndian.Uint64(p[8:])),
			n: int32(binary.LittleEndian.Uint32(p[16:])), zero: binary.LittleEndian.Uint32(p[20:])&flagZero != 0}
		if e.block < 0 || e.off < 0 || e.n <= 0 || e.n > blockSize || e.off+e.size() > length ||
			len(refs) > 0 && refs[len(refs)-1].block >= e.block {
			return false
		}
		refs = append(refs, e)
	}
	u.sorted, u.open = refs, nil
	return true
}

// removeIndex removes the cached index of u, if any.
func (r *Replica) removeIndex(u *undoLog) error {
	err := r.fs.Remove(indexPath(u.path))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove undo log index: %w", err)
	}
	return nil
}
