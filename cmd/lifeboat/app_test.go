package main

import (
	"io"
	"slices"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  string
	}{
		{"67108864", 64 << 20, ""},
		{"64MiB", 64 << 20, ""},
		{"64M", 64 << 20, ""},
		{"64 MiB", 64 << 20, ""},
		{"1GiB", 1 << 30, ""},
		{"512k", 512 << 10, ""},
		{"64MB", 0, "unknown unit"},
		{"", 0, "want a whole number"},
		{"-1", 0, "want a whole number"},
		{"99999999999T", 0, "too large"},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseSize(%q) = %d, %v; want error with %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestPermuteArgs(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	tests := []struct{ in, want string }{
		{"lifeboat journal inspect DIR --output json", "lifeboat journal inspect --output json DIR"},
		{"lifeboat journal inspect DIR -o=json -r", "lifeboat journal inspect -o=json -r DIR"},
		{"lifeboat journal inspect DIR --records -o json", "lifeboat journal inspect --records -o json DIR"},
		{"lifeboat journal verify -- -odd-dir", "lifeboat journal verify -- -odd-dir"},
		{"lifeboat demo --keep --size 8MiB", "lifeboat demo --keep --size 8MiB"},
		{"lifeboat journal", "lifeboat journal"},
		{"lifeboat bogus --x", "lifeboat bogus --x"},
	}
	for _, tt := range tests {
		got := strings.Join(permuteArgs(app, strings.Fields(tt.in)), " ")
		if got != tt.want {
			t.Errorf("permuteArgs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestVersionAndHelp(t *testing.T) {
	stdout, _, code := runApp(t, "version", "--output", "json")
	if code != 0 || !strings.Contains(stdout, `"journal_format": 1`) || !strings.Contains(stdout, `"version": "dev"`) {
		t.Errorf("version --output json: exit %d\n%s", code, stdout)
	}
	for _, args := range [][]string{{"--help"}, {"journal", "--help"}, {"journal", "inspect", "--help"},
		{"journal", "verify", "--help"}, {"demo", "--help"}, {"version", "--help"}} {
		stdout, stderr, code := runApp(t, args...)
		if code != 0 || !strings.Contains(stdout, "lifeboat") || !strings.Contains(stdout, "xample") {
			t.Errorf("%v: exit %d, no example in help:\n%s%s", args, code, stdout, stderr)
		}
	}
	if _, stderr, code := runApp(t, "journal", "nope"); code != 2 || !slices.Contains(strings.Fields(stderr), `"nope";`) {
		t.Errorf("journal nope: exit %d, %s", code, stderr)
	}
}
