package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"lifeboat/hrl"
)

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "check every segment of a journal directory and the continuity between them (read-only)",
		ArgsUsage: "DIR",
		Description: "Verifies every checksum of every segment in DIR and that each segment continues the previous\n" +
			"one (seq and generation), the same checks the agent makes when it opens the journal, without\n" +
			"changing anything.\n\n" +
			"Exit status:\n" +
			"   0  the journal verifies. A torn tail in the newest segment (a crash during the last write)\n" +
			"      is fine: it is reported and will be truncated on the next open.\n" +
			"   1  the journal is damaged: corruption in a sealed segment, a sealed segment after an unsealed\n" +
			"      one, or a gap between segments (or segments of another volume).\n" +
			"      The message names the file, the byte offset and the seq.\n" +
			"   2  usage error, or DIR cannot be read.\n\n" +
			"Example:\n" +
			"   lifeboat journal verify /var/lib/lifeboat/vol0/journal",
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			args, err := leafArgs(c, 1, "the journal directory")
			if err != nil {
				return err
			}
			return verifyDir(c.App.Writer, args[0])
		},
	}
}

// verifyDir prints one line per segment and returns a failure (exit 1)
// when the journal is damaged, or nil when it verifies. The verdict is
// hrl.Check's, the same the agent's recovery acts on.
func verifyDir(w io.Writer, dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return usageError("%v; pass the journal directory of a volume", err)
	}
	if !st.IsDir() {
		return usageError("%s is not a directory; verify takes the journal directory (use 'lifeboat journal inspect %s' for one segment)", dir, dir)
	}
	rep, err := inspectPath(dir, false)
	if err != nil {
		return err
	}
	if len(rep.Segments) == 0 {
		fmt.Fprintf(w, "journal %s: no segments to verify (the agent deletes segments once they are acknowledged)\n", dir)
		return nil
	}
	plan, cerr := hrl.Check(hrl.OSFS{}, dir)
	describe(w, &rep, plan)
	if cerr != nil {
		return failure("journal %s does not verify:\n  %v\n%s", dir, cerr, damageAdvice(dir))
	}
	first, last := plan.Segments[0], plan.Segments[len(plan.Segments)-1]
	fmt.Fprintf(w, "journal %s verifies: %s, %s, continuity ok\n", dir,
		plural(uint64(len(plan.Segments)), "segment"), seqRange(first.FirstSeq, last.LastSeq))
	return nil
}

// describe prints a line per segment: its checksum status and what the
// next open will do with it.
func describe(w io.Writer, rep *journalReport, plan hrl.Plan) {
	removed := map[string]bool{}
	for _, p := range plan.Remove {
		removed[p] = true
	}
	for i := range rep.Segments {
		s := &rep.Segments[i]
		name := filepath.Base(s.File)
		ck := s.Checksum
		switch {
		case removed[s.File]:
			fmt.Fprintf(w, "drop     %s  unsealed, and nothing in it continues the journal durably (%s): removed on the next open\n",
				name, ck.Message)
		case plan.Truncate != nil && plan.Truncate.File == s.File:
			fmt.Fprintf(w, "torn     %s  %s\n", name, ck.Message)
			fmt.Fprintf(w, "         a crash interrupted the last appends; the agent truncates %s at byte offset %d\n"+
				"         on the next open, keeping everything through seq %d\n", s.File, ck.Offset, ck.Seq)
		case ck.Status == statusOK && s.Sealed:
			fmt.Fprintf(w, "ok       %s  %s, %s, sealed\n", name, seqRange(s.FirstSeq, s.LastSeq), plural(s.Count, "record"))
		case ck.Status == statusOK:
			fmt.Fprintf(w, "ok       %s  %s, %s, open: the agent seals it on the next open\n",
				name, seqRange(s.FirstSeq, s.LastSeq), plural(s.Count, "record"))
		case ck.Status == statusTorn:
			fmt.Fprintf(w, "BAD      %s  %s\n", name, ck.Message)
		default:
			fmt.Fprintf(w, "CORRUPT  %s  %s\n", name, ck.Message)
		}
	}
	for _, g := range rep.Gaps {
		fmt.Fprintf(w, "GAP      %s\n", g.Message)
	}
}

// damageAdvice says what happens next and what to do.
func damageAdvice(dir string) string {
	return fmt.Sprintf("What now: keep a copy for analysis before the agent opens this journal again (cp -a %s %s.damaged).\n"+
		"On its next open the agent moves every segment to %s and starts a new\n"+
		"generation; the regions those segments changed stay dirty in the bitmap and are resynced, so nothing\n"+
		"acknowledged is lost, but recovery points in segments not yet shipped are not created.",
		dir, strings.TrimRight(dir, "/"), filepath.Join(dir, "quarantine", "<time>"))
}
