package main

import (
	"bytes"
	"os"
	"testing"

	"lifeboat/hrl"
)

// FuzzInspect feeds arbitrary segment bytes to the inspector: it must never
// panic, and what it reports must be self-consistent.
func FuzzInspect(f *testing.F) {
	dir := f.TempDir()
	w, err := hrl.Create(hrl.OSFS{}, dir, hrl.Header{Generation: 1, FirstSeq: 1}, hrl.WriterConfig{Dedupe: hrl.NewWindow(0)})
	if err != nil {
		f.Fatal(err)
	}
	blk := bytes.Repeat([]byte("lifeboat"), 512)
	w.AppendData(hrl.TypeWrite, 0, blk)
	w.AppendData(hrl.TypeWrite, 8192, blk)
	w.AppendZero(1<<20, 4096, true)
	w.AppendTag(hrl.Tag{Kind: hrl.TagCrash, Name: "p"})
	if _, err := w.Seal(); err != nil {
		f.Fatal(err)
	}
	w.Close()
	seed, err := os.ReadFile(w.Path())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(seed[:len(seed)-10])
	f.Add(seed[:hrl.HeaderSize])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		seg, err := inspectReader(bytes.NewReader(b), int64(len(b)), "fuzz.hrl", true)
		if err != nil {
			t.Fatalf("in-memory read failed: %v", err)
		}
		switch seg.Checksum.Status {
		case statusOK, statusTorn, statusCorrupt:
		default:
			t.Fatalf("status %q", seg.Checksum.Status)
		}
		if uint64(len(seg.Records)) != seg.Count {
			t.Fatalf("%d records listed, count %d", len(seg.Records), seg.Count)
		}
		if seg.GoodSize > seg.FileSize {
			t.Fatalf("good size %d beyond file size %d", seg.GoodSize, seg.FileSize)
		}
		if seg.Sealed && seg.Checksum.Status != statusOK {
			t.Fatalf("sealed but %s", seg.Checksum.Status)
		}
	})
}

// FuzzParseSize: parseSize never panics and never returns a negative size.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"64MiB", "1G", "512", "9999999999999T", "-1", "1 KiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := parseSize(s); err == nil && n < 0 {
			t.Fatalf("parseSize(%q) = %d", s, n)
		}
	})
}
