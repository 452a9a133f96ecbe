package failback

import (
	"bytes"
	"errors"
	"testing"

	"lifeboat/pipeline"
)

// A hash request from the network is either refused as a bad request or
// names only whole ranges inside the volume, and hashing them reads only
// inside it and answers HashSize bytes per block.
func FuzzHashRequest(f *testing.F) {
	f.Add([]byte(`{"block":4096,"ranges":[{"off":0,"len":8192},{"off":61440,"len":4096}]}`))
	f.Add([]byte(`{"ranges":[{"off":4096,"len":1}]}`))
	f.Add([]byte(`{"block":512,"ranges":[{"off":-512,"len":9223372036854775807}]}`))
	f.Add([]byte(`{"block":1048576,"ranges":[{"off":0,"len":65536}]}`))
	f.Add([]byte(`{"block":4096,"ranges":[{"off":0,"len":65537}],"x":1}`))
	const size = 64 << 10
	disk := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, size/7+1)[:size]
	buf := make([]byte, 1<<20)
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeHashRequest(bytes.NewReader(body), size)
		if err != nil {
			if !errors.Is(err, pipeline.ErrPermanent) {
				t.Fatalf("refused without a bad request error: %v", err)
			}
			return
		}
		var want int64
		for _, rg := range req.Ranges {
			if rg.Off < 0 || rg.Len < 0 || rg.Off+rg.Len > size || rg.Off%req.Block != 0 {
				t.Fatalf("accepted range [%d, +%d) of a %d-byte volume, block %d", rg.Off, rg.Len, size, req.Block)
			}
			want += blocks(rg.Len, req.Block) * HashSize
			if want > 1<<20 {
				return // a large answer: enough is checked
			}
		}
		var out []byte
		for _, rg := range req.Ranges {
			if out, err = hashBlocks(bytes.NewReader(disk), rg.Off, rg.Len, req.Block, buf, out); err != nil {
				t.Fatalf("hash [%d, +%d): %v", rg.Off, rg.Len, err)
			}
		}
		if int64(len(out)) != want {
			t.Fatalf("%d bytes of hashes, want %d", len(out), want)
		}
	})
}
