package pipeline

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/targets"
	"lifeboat/targets/memory"
)

// FuzzSegmentHeaders: any header values give an error or headers the
// receive path can rely on; never a panic.
func FuzzSegmentHeaders(f *testing.F) {
	f.Add("3f0c5a34-6a89-4d3e-9a44-9d0b6b1c2a11", "vol", "1048576", "4096", "1", "1", "9", "8192", "00112233445566ff", "zstd")
	f.Add("x", "", "-1", "0", "", "0", "18446744073709551615", "99999999999", "zz", "gzip")
	f.Fuzz(func(t *testing.T, id, name, size, bs, gen, first, last, segSize, sum, enc string) {
		r := httptest.NewRequest(http.MethodPost, "/v1/volumes/x/segments", nil)
		r.SetPathValue("id", id)
		for k, v := range map[string]string{hdrVolumeName: name, hdrVolumeSize: size, hdrBlockSize: bs,
			hdrGeneration: gen, hdrFirstSeq: first, hdrLastSeq: last, hdrSegmentSize: segSize, hdrSegmentSum: sum,
			"Content-Encoding": enc} {
			r.Header.Set(k, v)
		}
		h, err := parseSegmentHeaders(r)
		if err != nil {
			return
		}
		if h.first == 0 || h.last+1 < h.first || h.size < hrl.HeaderSize || h.size > maxSegmentWireBytes ||
			h.info.Size <= 0 || h.info.BlockSize <= 0 || h.info.Name == "" {
			t.Fatalf("accepted headers %+v", h)
		}
	})
}

// fuzzSeed journals a few records (data, zeros, a repeated block for a
// REF, a tag) and returns the sealed segment.
func fuzzSeed(f *testing.F, id uuid.UUID) []byte {
	return sealedSegment(f, id, func(w *hrl.Writer) error {
		blk := bytes.Repeat([]byte("lifeboat"), 512)
		w.AppendData(hrl.TypeWrite, 0, append(append([]byte{}, blk...), make([]byte, 4096)...))
		w.AppendData(hrl.TypeWrite, 16384, blk)
		w.AppendZero(32768, 8192, true)
		_, err := w.AppendTag(hrl.Tag{Kind: hrl.TagCrash, Name: "t"})
		return err
	})
}

// FuzzReceiveAndApply: whatever bytes arrive as a segment (compressed or
// not, with the agent's whole-segment hash matching them, as when the
// agent's own copy is damaged), the server refuses them with an error or
// applies them to the replica without panicking; what it accepts is a
// sealed segment of the announced volume and seqs.
func FuzzReceiveAndApply(f *testing.F) {
	id := uuid.MustParse("3f0c5a34-6a89-4d3e-9a44-9d0b6b1c2a11")
	seed := fuzzSeed(f, id)
	f.Add(seed, false)
	enc, _ := zstd.NewWriter(nil)
	f.Add(enc.EncodeAll(seed, nil), true)
	f.Add(seed[:len(seed)/2], false)
	f.Fuzz(func(t *testing.T, body []byte, compressed bool) {
		info := targets.VolumeInfo{ID: id.String(), Name: "vol", Size: 1 << 20, BlockSize: 4096}
		s := &Server{spool: spool{fs: hrltest.New(), dir: "/spool"}}
		h := segmentHeaders{info: info, generation: 1, first: 1, last: 5, size: int64(len(seed)), encoding: contentEncodingPlain}
		if compressed {
			h.encoding = contentEncodingZstd
		} else {
			h.size = int64(len(body))
		}
		if h.size < hrl.HeaderSize {
			return
		}
		bp, data, err := s.readSegment(bytes.NewReader(body), h)
		defer s.releaseBuf(bp)
		if err != nil {
			return
		}
		h.sum = xxhash.Sum64(data)
		if err := verifySegment(data, h); err != nil {
			return
		}
		sc, err := hrl.Scan(bytes.NewReader(data), int64(len(data)), "x")
		if err != nil || !sc.Sealed || sc.VolumeID != id || sc.FirstSeq != h.first || sc.LastSeq != h.last {
			t.Fatalf("accepted a segment that does not match its headers: %+v, %v", sc, err)
		}
		s.spool.fs.MkdirAll(s.spool.volDir(info.ID), 0o700)
		sg, err := s.spool.put(info.ID, spooledSeg{generation: 1, first: h.first, last: h.last}, data)
		if err != nil {
			t.Fatal(err)
		}
		target := memory.New()
		s.Target = target
		rep, err := target.Open(context.Background(), info)
		if err != nil {
			t.Fatal(err)
		}
		v := &volume{info: info, rep: rep, srv: s}
		n, err := v.applySegment(context.Background(), sg) // an error is fine, a panic is not
		t.Logf("applied %d bytes, err %v", n, err)
	})
}
