package tracker

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cespare/xxhash/v2"

	"lifeboat/hrl"
)

// The acked file holds the last acknowledged seq. It is written once per
// acknowledged segment, so it is a fixed-size record rewritten in place
// rather than a JSON document replaced by rename: two 512-byte slots used
// alternately, each with a counter and a checksum, so that a torn write of
// one slot leaves the other one valid.
//
//	slot: magic "LBACKED1" (8) | counter (8) | seq (8) | xxhash64 of bytes 0..24 (8)
const (
	ackedName  = "acked"
	ackedMagic = "LBACKED1"
	ackedSlot  = 512
)

type ackedFile struct {
	f       hrl.File
	counter uint64
	buf     [ackedSlot]byte
}

// openAcked opens the acked file and returns the last acknowledged seq (0
// for a new file).
func openAcked(fsys hrl.FS, dir string) (*ackedFile, uint64, error) {
	f, err := fsys.OpenFile(filepath.Join(dir, ackedName), os.O_RDWR|os.O_CREATE, hrl.PrivateFile)
	if err != nil {
		return nil, 0, fmt.Errorf("open acked seq: %w", err)
	}
	a := &ackedFile{f: f}
	var b [2 * ackedSlot]byte
	n, err := f.ReadAt(b[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, 0, fmt.Errorf("read acked seq: %w", err)
	}
	var seq uint64
	for s := 0; s+32 <= n && s < len(b); s += ackedSlot {
		p := b[s : s+32]
		if string(p[:8]) != ackedMagic || le.Uint64(p[24:]) != xxhash.Sum64(p[:24]) {
			continue
		}
		if c := le.Uint64(p[8:]); c >= a.counter {
			a.counter, seq = c, le.Uint64(p[16:])
		}
	}
	return a, seq, nil
}

// store durably records seq as the last acknowledged one.
func (a *ackedFile) store(seq uint64) error {
	if err := a.write(seq); err != nil {
		return err
	}
	return a.sync()
}

// sync makes the last write durable.
func (a *ackedFile) sync() error {
	if err := a.f.Sync(); err != nil {
		return fmt.Errorf("record acked seq: %w", err)
	}
	return nil
}

// write records seq as the last acknowledged one, not durably yet.
func (a *ackedFile) write(seq uint64) error {
	a.counter++
	p := a.buf[:]
	copy(p, ackedMagic)
	le.PutUint64(p[8:], a.counter)
	le.PutUint64(p[16:], seq)
	le.PutUint64(p[24:], xxhash.Sum64(p[:24]))
	if _, err := a.f.WriteAt(p, int64(a.counter%2)*ackedSlot); err != nil {
		return fmt.Errorf("record acked seq: %w", err)
	}
	return nil
}

func (a *ackedFile) Close() error { return a.f.Close() }
