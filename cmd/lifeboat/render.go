package main

import (
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// writeReport prints a journal report for people.
func writeReport(w io.Writer, rep *journalReport, records bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for i := range rep.Segments {
		writeSegment(tw, &rep.Segments[i], records)
		fmt.Fprintln(tw)
	}
	writeSummary(tw, rep)
	return tw.Flush()
}

func writeSegment(w io.Writer, s *segmentReport, records bool) {
	fmt.Fprintf(w, "segment %s\n", filepath.Base(s.File))
	fmt.Fprintf(w, "  file:\t%s (%s)\n", s.File, humanBytes(uint64(s.FileSize)))
	if h := s.Header; h != nil {
		fmt.Fprintf(w, "  header:\tformat %d, block size %d, generation %d, first seq %d\n",
			h.Version, h.BlockSize, h.Generation, h.FirstSeq)
		fmt.Fprintf(w, "  volume:\t%s\n", h.VolumeID)
		fmt.Fprintf(w, "  created:\t%s\n", h.Created.Format(time.RFC3339Nano))
		state := "open (not sealed)"
		if s.Sealed {
			state = "sealed"
		}
		fmt.Fprintf(w, "  state:\t%s, %s, %s\n", state, plural(s.Count, "record"), seqRange(s.FirstSeq, s.LastSeq))
	} else {
		fmt.Fprintf(w, "  header:\tunreadable\n")
	}
	fmt.Fprintf(w, "  checksum:\t%s\n", s.Checksum.Message)
	writeTypes(w, s.Types)
	for _, t := range s.Tags {
		fmt.Fprintf(w, "  tag:\tseq %d, %s, %q, %s\n", t.Seq, t.Kind, t.Name, t.Time.Format(time.RFC3339Nano))
	}
	if records && len(s.Records) > 0 {
		fmt.Fprintf(w, "  records:\n")
		fmt.Fprintf(w, "    seq\ttype\toffset\tlength\tflags\tfile offset\n")
		for _, r := range s.Records {
			flags := "-"
			if r.Flags&1 != 0 {
				flags = "trim"
			}
			extra := ""
			if r.Ref != nil {
				extra = fmt.Sprintf("\tsame bytes as seq %d", r.Ref.SourceSeq)
			}
			fmt.Fprintf(w, "    %d\t%s\t%d\t%d\t%s\t%d%s\n", r.Seq, r.Type, r.Offset, r.Length, flags, r.FileOffset, extra)
		}
	}
}

// writeTypes prints the per-type table.
func writeTypes(w io.Writer, types map[string]*typeStats) {
	if len(types) == 0 {
		fmt.Fprintf(w, "  records:\tnone\n")
		return
	}
	names := slices.Clone(typeOrder)
	for k := range types {
		if !slices.Contains(names, k) {
			names = append(names, k)
		}
	}
	fmt.Fprintf(w, "  by type:\trecords\tcovers\tpayload\n")
	for _, k := range names {
		t := types[k]
		if t == nil {
			continue
		}
		note := ""
		if t.TrimRecords > 0 {
			note = fmt.Sprintf("\t(%d of them trims)", t.TrimRecords)
		}
		fmt.Fprintf(w, "    %s\t%d\t%s\t%s%s\n", strings.ToUpper(k), t.Records, humanBytes(t.Bytes), humanBytes(t.PayloadBytes), note)
	}
}

// writeSummary prints the totals and the continuity verdict of a directory.
func writeSummary(w io.Writer, rep *journalReport) {
	if len(rep.Segments) == 0 {
		fmt.Fprintf(w, "journal %s: no segments (*.hrl) found\n", rep.Path)
		return
	}
	var count uint64
	var bytes int64
	for _, s := range rep.Segments {
		count += s.Count
		bytes += s.FileSize
	}
	first, last := rep.Segments[0], rep.Segments[len(rep.Segments)-1]
	fmt.Fprintf(w, "total:\t%s, %s, %s, %s on disk\n", plural(uint64(len(rep.Segments)), "segment"),
		plural(count, "record"), seqRange(first.FirstSeq, last.LastSeq), humanBytes(uint64(bytes)))
	writeTypes(w, rep.totalStats())
	if len(rep.Segments) < 2 {
		return
	}
	if len(rep.Gaps) == 0 {
		fmt.Fprintf(w, "continuity:\tok (each segment starts where the previous one ends)\n")
	}
	for _, g := range rep.Gaps {
		fmt.Fprintf(w, "continuity:\tGAP: %s\n", g.Message)
	}
}

func seqRange(first, last uint64) string {
	if last < first {
		return fmt.Sprintf("no seqs (next is %d)", first)
	}
	return fmt.Sprintf("seq %d..%d", first, last)
}

// humanBytes formats n in binary units: "512 B", "4.0 KiB", "1.5 MiB".
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
