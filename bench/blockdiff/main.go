// Command blockdiff counts the 4 KiB blocks in which two files of the same
// size differ (bench/failback.sh: the bytes a failback really has to move
// between the primary disk and the failover volume).
//
// Usage:
//
//	blockdiff [-block N] A B
//
// It prints one line, "BYTES BLOCKS": the differing blocks times the block
// size, and their count. A last partial block counts as a whole block.
// Both files are read in full, holes too.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "blockdiff:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("blockdiff", flag.ContinueOnError)
	block := fs.Int("block", 4096, "block `size` in bytes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 || *block <= 0 {
		return errors.New("usage: blockdiff [-block N] A B")
	}
	n, err := differing(fs.Arg(0), fs.Arg(1), *block)
	if err != nil {
		return err
	}
	fmt.Printf("%d %d\n", n*int64(*block), n)
	return nil
}

// differing is the number of blocks in which files a and b differ.
func differing(a, b string, block int) (int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return 0, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return 0, err
	}
	defer fb.Close()
	sa, err := fa.Stat()
	if err != nil {
		return 0, err
	}
	sb, err := fb.Stat()
	if err != nil {
		return 0, err
	}
	if sa.Size() != sb.Size() {
		return 0, fmt.Errorf("%s is %d bytes and %s %d: compare files of the same size", a, sa.Size(), b, sb.Size())
	}
	chunk := block * max(1, (4<<20)/block)
	x, y := make([]byte, chunk), make([]byte, chunk)
	var n int64
	for off := int64(0); off < sa.Size(); off += int64(chunk) {
		ln := int(min(int64(chunk), sa.Size()-off))
		if _, err := io.ReadFull(io.NewSectionReader(fa, off, int64(ln)), x[:ln]); err != nil {
			return 0, fmt.Errorf("read %s at %d: %w", a, off, err)
		}
		if _, err := io.ReadFull(io.NewSectionReader(fb, off, int64(ln)), y[:ln]); err != nil {
			return 0, fmt.Errorf("read %s at %d: %w", b, off, err)
		}
		for i := 0; i < ln; i += block {
			e := min(i+block, ln)
			if !bytes.Equal(x[i:e], y[i:e]) {
				n++
			}
		}
	}
	return n, nil
}
