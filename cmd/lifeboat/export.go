package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"lifeboat/hrl"
)

// exportFile is where `points export` writes an image, all or nothing: a
// regular file is written under a temporary name beside it (mode 0600, the
// image is the volume's data) and renamed over it only when complete and
// fsynced; a block device (a restore onto a disk) is written in place,
// every byte, zeros included, since it holds old data.
type exportFile struct {
	path, tmp string
	f         *os.File
	device    bool
}

func createExport(path string) (*exportFile, error) {
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		return &exportFile{path: path, f: f, device: true}, nil
	case err == nil && !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%s is not a regular file or a block device", path)
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".partial-*")
	if err != nil {
		return nil, err
	}
	return &exportFile{path: path, tmp: f.Name(), f: f}, nil
}

// copy writes r, which must hold size bytes, from offset 0. A regular file
// skips all-zero 64 KiB blocks so it stays sparse.
func (e *exportFile) copy(r io.Reader, size int64) (int64, error) {
	if e.device {
		end, err := e.f.Seek(0, io.SeekEnd)
		if err != nil {
			return 0, err
		}
		if end < size {
			return 0, fmt.Errorf("%s holds %d bytes, the image %d", e.path, end, size)
		}
	}
	buf := make([]byte, 64<<10)
	var off int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if e.device || !hrl.IsZero(buf[:n]) {
				if _, werr := e.f.WriteAt(buf[:n], off); werr != nil {
					return off, werr
				}
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF && off == size {
			break
		}
		if err != nil {
			return off, err
		}
	}
	if off != size {
		return off, fmt.Errorf("received %d of %d bytes", off, size)
	}
	if !e.device {
		return off, e.f.Truncate(off)
	}
	return off, nil
}

// commit makes the image durable and, for a file, gives it its name.
func (e *exportFile) commit() error {
	err := e.f.Sync()
	if cerr := e.f.Close(); err == nil {
		err = cerr
	}
	if err != nil || e.device {
		return err
	}
	if err := os.Rename(e.tmp, e.path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(e.path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// abort drops a file's partial image; a device keeps what was written.
func (e *exportFile) abort() {
	e.f.Close()
	if !e.device {
		os.Remove(e.tmp)
	}
}
