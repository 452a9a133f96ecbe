package hrltest

import (
	"os"
	"testing"

	"lifeboat/hrl"
)

// Segment writes a segment with header h (in a temporary directory of tb),
// lets fill append its records, seals it and returns its bytes: what an
// agent ships for those records.
func Segment(tb testing.TB, h hrl.Header, fill func(w *hrl.Writer) error) []byte {
	tb.Helper()
	w, err := hrl.Create(hrl.OSFS{}, tb.TempDir(), h, hrl.WriterConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	if err := fill(w); err != nil {
		tb.Fatal(err)
	}
	info, err := w.Seal()
	if err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	b, err := os.ReadFile(info.Path)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// WriteSegment is Segment with one WRITE record of data at offset 0.
func WriteSegment(tb testing.TB, h hrl.Header, data []byte) []byte {
	tb.Helper()
	return Segment(tb, h, func(w *hrl.Writer) error {
		_, _, err := w.AppendData(hrl.TypeWrite, 0, data)
		return err
	})
}
