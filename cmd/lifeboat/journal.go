package main

import (
	"github.com/urfave/cli/v2"
)

func journalCommand() *cli.Command {
	return &cli.Command{
		Name:  "journal",
		Usage: "inspect and verify journal segments (.hrl files) of a protected volume",
		Description: "The journal is the ordered, checksummed record of every change to a protected volume:\n" +
			"segment files named by their first seq (0000000000000001.hrl, ...) in the volume's journal directory.\n\n" +
			"Examples:\n" +
			"   lifeboat journal inspect /var/lib/lifeboat/vol0/journal\n" +
			"   lifeboat journal verify /var/lib/lifeboat/vol0/journal",
		OnUsageError: onUsageError,
		Action:       unknownCommand,
		Subcommands:  []*cli.Command{inspectCommand(), verifyCommand()},
	}
}

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "describe journal segments: header, seqs, checksum status, tags, records by type",
		ArgsUsage: "FILE|DIR",
		Description: "Reads a segment file, or every segment of a journal directory in seq order, and prints for each\n" +
			"its header (format, block size, volume id, generation, first seq, creation time), whether it is\n" +
			"sealed, its record count and last seq, its checksum status (ok, torn tail at offset X after seq N,\n" +
			"or CORRUPT with the offset and seq), its tags (recovery points) and its records counted by type\n" +
			"with the volume bytes they cover. For a directory it also checks that each segment continues the\n" +
			"previous one. Nothing is modified. Damage is reported, not fatal: use 'journal verify' for a verdict.\n\n" +
			"--output json prints one document with snake_case keys (path, segments[], gaps[]; see README.md).\n\n" +
			"Examples:\n" +
			"   lifeboat journal inspect /var/lib/lifeboat/vol0/journal\n" +
			"   lifeboat journal inspect --records journal/0000000000000001.hrl\n" +
			"   lifeboat journal inspect -o json journal | jq '.segments[].count'",
		Flags: []cli.Flag{
			outputFlag(),
			&cli.BoolFlag{Name: "records", Aliases: []string{"r"},
				Usage: "also list every record: seq, type, volume offset, length, flags, offset in the file"},
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			format, err := outputFormat(c)
			if err != nil {
				return err
			}
			args, err := leafArgs(c, 1, "one segment file or journal directory")
			if err != nil {
				return err
			}
			rep, err := inspectPath(args[0], c.Bool("records"))
			if err != nil {
				return err
			}
			if format == "json" {
				return printJSON(c.App.Writer, rep)
			}
			return writeReport(c.App.Writer, &rep, c.Bool("records"))
		},
	}
}
