package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseVolumeSpec(t *testing.T) {
	tests := []struct {
		in   string
		want volumeSpec
		err  string
	}{
		{"db=/dev/sdb", volumeSpec{Name: "db", Path: "/dev/sdb"}, ""},
		{"s=/srv/s.img,size=1GiB,ro", volumeSpec{Name: "s", Path: "/srv/s.img", Size: 1 << 30, ReadOnly: true}, ""},
		{"noequals", volumeSpec{}, "want NAME=PATH"},
		{"bad name=/x", volumeSpec{}, "must be 1-64 letters"},
		{"a=/x,size=100", volumeSpec{}, "multiple of 512"},
		{"a=/x,zz", volumeSpec{}, "unknown option"},
		{"a=,size=1M", volumeSpec{}, "empty path"},
	}
	for _, tt := range tests {
		got, err := parseVolumeSpec(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: err = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestVolumeSpecPrepare(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "v.img")
	if err := (volumeSpec{Name: "v", Path: p}).prepare(); err == nil || !strings.Contains(err.Error(), "add ,size=") {
		t.Fatalf("missing file without size: %v", err)
	}
	if err := (volumeSpec{Name: "v", Path: p, Size: 1 << 20}).prepare(); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Size() != 1<<20 {
		t.Fatalf("size %d", st.Size())
	}
	if err := (volumeSpec{Name: "v", Path: p, Size: 2 << 20}).prepare(); err == nil || !strings.Contains(err.Error(), "never resizes") {
		t.Fatalf("size mismatch: %v", err)
	}
	if err := (volumeSpec{Name: "v", Path: p}).prepare(); err != nil {
		t.Fatal(err)
	}
}
