package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"time"

	"lifeboat/nbd"
)

// makeDemoVolume creates the sparse volume file with data in about an
// eighth of it (1 MiB chunks, half random, half compressible text), as a
// server that already holds data when it is first protected. It returns
// the bytes of data written.
func makeDemoVolume(path string, size int64, seed uint64) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return 0, fmt.Errorf("size the demo volume: %w", err)
	}
	rng := rand.New(rand.NewPCG(seed, 0x1b))
	chunks := size >> 20
	n := max(1, chunks/8)
	chunk := make([]byte, 1<<20)
	for i, c := range rng.Perm(int(chunks))[:n] {
		if i%2 == 0 {
			fillRandom(rng, chunk)
		} else {
			fillText(chunk, int64(c)<<20)
		}
		if _, err := f.WriteAt(chunk, int64(c)<<20); err != nil {
			return 0, err
		}
	}
	return n << 20, f.Sync()
}

// demoRound is what one round of the workload did.
type demoRound struct {
	Written int64 // bytes in WRITE requests
	Zeroed  int64 // bytes in TRIM and WRITE_ZEROES requests
	Writes  int   // WRITE requests
	Took    time.Duration
	Flush   time.Duration // of which the FLUSH
}

// writeRound sends one round of the workload through the NBD client:
// random 4 KiB writes, 1 MiB writes of text, unaligned writes, one block
// written many times (dedupe), a trim, a write-zeroes, then a FLUSH.
func writeRound(c *nbd.Client, rng *rand.Rand) (demoRound, error) {
	var r demoRound
	start := time.Now()
	size := c.Size()
	at := func(n int64) int64 { return rng.Int64N((size-n)/4096+1) * 4096 }
	write := func(b []byte, off int64) error {
		if _, err := c.WriteAt(b, off); err != nil {
			return fmt.Errorf("NBD write of %d bytes at %d: %w", len(b), off, err)
		}
		r.Written += int64(len(b))
		r.Writes++
		return nil
	}
	b := make([]byte, 4096)
	for range 200 {
		fillRandom(rng, b)
		if err := write(b, at(4096)); err != nil {
			return r, err
		}
	}
	fillRandom(rng, b)
	for range 16 { // the same block everywhere: the journal stores REF records
		if err := write(b, at(4096)); err != nil {
			return r, err
		}
	}
	big := make([]byte, 1<<20)
	for range 4 {
		off := rng.Int64N(size>>20) << 20
		fillText(big, off)
		if err := write(big, off); err != nil {
			return r, err
		}
	}
	for range 8 {
		u := big[:1+rng.IntN(12<<10)]
		fillRandom(rng, u)
		if err := write(u, rng.Int64N(size-int64(len(u)))); err != nil {
			return r, err
		}
	}
	trim, zero := at(1<<20), at(256<<10)
	if err := c.Trim(trim, 1<<20); err != nil {
		return r, fmt.Errorf("NBD trim: %w", err)
	}
	if err := c.WriteZeroes(zero, 256<<10); err != nil {
		return r, fmt.Errorf("NBD write-zeroes: %w", err)
	}
	r.Zeroed += 1<<20 + 256<<10
	f := time.Now()
	if err := c.Flush(); err != nil {
		return r, fmt.Errorf("NBD flush: %w", err)
	}
	r.Flush, r.Took = time.Since(f), time.Since(start)
	return r, nil
}

// compareVolume reads c whole, and returns its sha256 and how many bytes
// of 4 KiB blocks differ from the file at path.
func compareVolume(c *nbd.Client, path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	buf, other := make([]byte, 1<<20), make([]byte, 1<<20)
	var differ int64
	for off := int64(0); off < c.Size(); off += int64(len(buf)) {
		n := min(int64(len(buf)), c.Size()-off)
		if _, err := c.ReadAt(buf[:n], off); err != nil {
			return "", 0, fmt.Errorf("NBD read at %d: %w", off, err)
		}
		if _, err := f.ReadAt(other[:n], off); err != nil {
			return "", 0, fmt.Errorf("read %s at %d: %w", path, off, err)
		}
		h.Write(buf[:n])
		for i := int64(0); i < n; i += 4096 {
			if e := min(i+4096, n); !bytes.Equal(buf[i:e], other[i:e]) {
				differ += e - i
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)), differ, nil
}

// hashFile returns the hex sha256 of a file's content.
func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
}

// fillText fills b with log-like lines that name their offset: data that
// compresses, as most of a real disk does.
func fillText(b []byte, off int64) {
	var line []byte
	for i := 0; i < len(b); i += len(line) {
		line = fmt.Appendf(line[:0], "%012d lifeboat demo: this line was written at byte %d of the volume\n", off+int64(i), off+int64(i))
		copy(b[i:], line)
	}
}
