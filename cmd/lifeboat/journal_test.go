package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/hrl"
)

func TestVerify(t *testing.T) {
	clean := trackedJournal(t)
	tests := []struct {
		name     string
		damage   func(t *testing.T, segs []string) // segs: copies, oldest first
		wantCode int
		want     []string // substrings of stdout+stderr; %NEWEST% and %FIRST% name files
	}{
		{"clean", func(*testing.T, []string) {}, 0, []string{"verifies", "continuity ok"}},
		{"torn footer of the newest", func(t *testing.T, s []string) { truncateBy(t, s[len(s)-1], 10) }, 0,
			[]string{"torn tail at byte offset", "truncates %NEWEST% at byte offset", "verifies"}},
		{"torn record in the newest", func(t *testing.T, s []string) { truncateBy(t, s[len(s)-1], 100) }, 0,
			[]string{"torn tail at byte offset", "keeping everything through seq", "verifies"}},
		{"torn record in an older segment", func(t *testing.T, s []string) { truncateBy(t, s[0], 100) }, 1,
			[]string{"sealed segment after an unsealed one", "quarantine"}},
		{"unsealed older segment", func(t *testing.T, s []string) {
			truncateBy(t, s[0], hrl.RecordHeaderSize+16) // exactly the footer
		}, 1, []string{"sealed segment after an unsealed one"}},
		{"missing middle segment", func(t *testing.T, s []string) { os.Remove(s[1]) }, 1,
			[]string{"journal gap", "starts at seq", "cp -a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := copyDir(t, clean)
			segs := segmentFiles(t, dir)
			tt.damage(t, segs)
			stdout, stderr, code := runApp(t, "journal", "verify", dir)
			out := stdout + stderr
			if code != tt.wantCode {
				t.Fatalf("exit code %d, want %d; output:\n%s", code, tt.wantCode, out)
			}
			for _, w := range tt.want {
				w = strings.NewReplacer("%NEWEST%", segs[len(segs)-1], "%FIRST%", segs[0]).Replace(w)
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			// verify must agree with what the agent's recovery will do.
			_, rerr := hrl.Recover(hrl.OSFS{}, copyDir(t, dir))
			if (rerr == nil) != (code == 0) {
				t.Errorf("verify exit %d but hrl.Recover says %v", code, rerr)
			}
		})
	}
}

func TestVerifyCorruptNamesFileOffsetSeq(t *testing.T) {
	dir := copyDir(t, trackedJournal(t))
	segs := segmentFiles(t, dir)
	first := segs[0]
	// Pick a WRITE record in the middle of the oldest (sealed) segment.
	rep, err := inspectPath(first, true)
	if err != nil {
		t.Fatal(err)
	}
	recs := rep.Segments[0].Records
	var victim *recordReport
	for i := len(recs) / 2; i < len(recs); i++ {
		if recs[i].Type == "WRITE" {
			victim = &recs[i]
			break
		}
	}
	if victim == nil {
		t.Fatalf("no WRITE record in the second half of %s", first)
	}
	f, err := os.OpenFile(first, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	at := victim.FileOffset + hrl.RecordHeaderSize + 100
	b := []byte{0}
	f.ReadAt(b, at)
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
	f.Close()

	stdout, stderr, code := runApp(t, "journal", "verify", dir)
	if code != 1 {
		t.Fatalf("exit code %d, want 1; output:\n%s%s", code, stdout, stderr)
	}
	want := fmt.Sprintf("journal corrupt: %s at byte offset %d (seq %d)", first, victim.FileOffset, victim.Seq)
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
	for _, w := range []string{"CORRUPT", "keep a copy", "quarantine"} {
		if !strings.Contains(stdout+stderr, w) {
			t.Errorf("output lacks %q:\n%s%s", w, stdout, stderr)
		}
	}
	if _, err := hrl.Recover(hrl.OSFS{}, copyDir(t, dir)); !errors.Is(err, hrl.ErrCorrupt) {
		t.Errorf("hrl.Recover = %v, want ErrCorrupt like verify", err)
	}
}

func TestVerifyUsage(t *testing.T) {
	file := segmentFiles(t, trackedJournal(t))[0]
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"empty dir", []string{t.TempDir()}, 0, "no segments to verify"},
		{"no argument", nil, 2, "want the journal directory"},
		{"missing dir", []string{filepath.Join(t.TempDir(), "nope")}, 2, "no such file or directory"},
		{"a file", []string{file}, 2, "is not a directory"},
		{"unknown flag", []string{"--bogus", "x"}, 2, "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, code := runApp(t, append([]string{"journal", "verify"}, tt.args...)...)
			if code != tt.code || !strings.Contains(stdout+stderr, tt.want) {
				t.Errorf("exit %d (want %d), output (want %q):\n%s%s", code, tt.code, tt.want, stdout, stderr)
			}
		})
	}
}

// TestInspectJSON writes segments with hrl directly, so the exact records
// are known.
func TestInspectJSON(t *testing.T) {
	dir := t.TempDir()
	blk := func(seed byte) []byte {
		b := make([]byte, 4096)
		for i := range b {
			b[i] = seed + byte(i*7)
		}
		return b
	}
	w, err := hrl.Create(hrl.OSFS{}, dir, hrl.Header{Generation: 2, FirstSeq: 1, VolumeID: [16]byte{0xab, 1}},
		hrl.WriterConfig{Dedupe: hrl.NewWindow(0)})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, _, err = w.AppendData(hrl.TypeWrite, 0, append(blk(1), blk(2)...)) // seq 1: WRITE 8192
	must(err)
	_, _, err = w.AppendData(hrl.TypeWrite, 1<<20, blk(1)) // seq 2: REF 4096
	must(err)
	_, err = w.AppendZero(2<<20, 8192, true) // seq 3: ZERO (trim)
	must(err)
	_, err = w.AppendTag(hrl.Tag{Kind: hrl.TagCrash, Name: "t1"}) // seq 4
	must(err)
	_, err = w.Seal()
	must(err)
	w.Close()
	w, err = hrl.Create(hrl.OSFS{}, dir, hrl.Header{Generation: 2, FirstSeq: 5, VolumeID: [16]byte{0xab, 1}}, hrl.WriterConfig{})
	must(err)
	_, _, err = w.AppendData(hrl.TypeResync, 4096, blk(3)) // seq 5: RESYNC
	must(err)
	_, err = w.AppendTag(hrl.Tag{Kind: hrl.TagApp, Name: "t2"}) // seq 6
	must(err)
	w.Close() // not sealed: the open newest segment

	stdout, stderr, code := runApp(t, "journal", "inspect", dir, "--output", "json", "--records")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep journalReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout)
	}
	if len(rep.Segments) != 2 || len(rep.Gaps) != 0 {
		t.Fatalf("%d segments, %d gaps, want 2 and 0", len(rep.Segments), len(rep.Gaps))
	}
	s0, s1 := rep.Segments[0], rep.Segments[1]
	if s0.Count != 4 || !s0.Sealed || s0.FirstSeq != 1 || s0.LastSeq != 4 || s0.Checksum.Status != "ok" {
		t.Errorf("segment 1: count %d sealed %v seqs %d..%d status %s, want 4 true 1..4 ok",
			s0.Count, s0.Sealed, s0.FirstSeq, s0.LastSeq, s0.Checksum.Status)
	}
	if s1.Count != 2 || s1.Sealed || s1.FirstSeq != 5 || s1.LastSeq != 6 {
		t.Errorf("segment 2: count %d sealed %v seqs %d..%d, want 2 false 5..6", s1.Count, s1.Sealed, s1.FirstSeq, s1.LastSeq)
	}
	if h := s0.Header; h == nil || h.Generation != 2 || h.BlockSize != 4096 || h.VolumeID != "ab010000-0000-0000-0000-000000000000" {
		t.Errorf("header = %+v", h)
	}
	wantTypes := map[string]typeStats{
		"write": {Records: 1, Bytes: 8192, PayloadBytes: 8192},
		"ref":   {Records: 1, Bytes: 4096, PayloadBytes: 24},
		"zero":  {Records: 1, Bytes: 8192, TrimRecords: 1},
		"tag":   {Records: 1, PayloadBytes: 14},
	}
	if len(s0.Types) != len(wantTypes) {
		t.Errorf("types = %v, want %v", s0.Types, wantTypes)
	}
	for k, want := range wantTypes {
		if got := s0.Types[k]; got == nil || *got != want {
			t.Errorf("types[%s] = %+v, want %+v", k, got, want)
		}
	}
	if got := s1.Types["resync"]; got == nil || got.Records != 1 {
		t.Errorf("segment 2 resync = %+v, want 1 record", got)
	}
	if len(s0.Tags) != 1 || s0.Tags[0].Name != "t1" || s0.Tags[0].Kind != "crash" || s0.Tags[0].Seq != 4 {
		t.Errorf("segment 1 tags = %+v", s0.Tags)
	}
	if len(s1.Tags) != 1 || s1.Tags[0].Kind != "app" {
		t.Errorf("segment 2 tags = %+v", s1.Tags)
	}
	if len(s0.Records) != 4 || s0.Records[1].Type != "REF" || s0.Records[1].Ref == nil || s0.Records[1].Ref.SourceSeq != 1 {
		t.Errorf("segment 1 records = %+v", s0.Records)
	}
	// The raw document uses the documented snake_case keys.
	for _, key := range []string{`"first_seq"`, `"last_seq"`, `"block_size"`, `"volume_id"`, `"payload_bytes"`, `"trim_records"`, `"file_offset"`, `"gaps": []`} {
		if !strings.Contains(stdout, key) {
			t.Errorf("JSON lacks %s", key)
		}
	}
}

func TestInspectText(t *testing.T) {
	dir := copyDir(t, trackedJournal(t))
	segs := segmentFiles(t, dir)
	truncateBy(t, segs[len(segs)-1], 100)
	stdout, stderr, code := runApp(t, "journal", "inspect", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, w := range []string{"segment " + filepath.Base(segs[0]), "sealed", "checksum:  ok", "torn tail at byte offset",
		`crash, "crash-1"`, `app, "app-1"`, "WRITE", "continuity:  ok", "(1 of them trims)"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("output lacks %q:\n%s", w, stdout)
		}
	}
	if _, stderr, code := runApp(t, "journal", "inspect", "-o", "yaml", dir); code != 2 || !strings.Contains(stderr, "use text or json") {
		t.Errorf("--output yaml: exit %d, %s", code, stderr)
	}
}
