# A Perl workload: hashes, regexes, string building, sorting, splitting and joining.
use strict;
use warnings;
my %h;
for my $i (1 .. 100000) { $h{"key$i"} = join(",", map { $_ * $i } 1 .. ($i % 10)); }
my $total = 0;
$total += length($h{$_}) for keys %h;
print "keys=", scalar(keys %h), " total=$total\n";
my @sorted = sort { length($h{$b}) <=> length($h{$a}) || $a cmp $b } keys %h;
print "@sorted[0 .. 9]\n";
my $text = join("\n", map { "line $_: " . ("x" x ($_ % 80)) } 1 .. 20000);
my @matches = ($text =~ /line (\d+7): x{10}/g);
print scalar(@matches), " ", $matches[-1], "\n";
my %words;
$words{$_}++ for split /\W+/, $text;
print join(" ", map { "$_=$words{$_}" } (sort keys %words)[0 .. 5]), "\n";
delete $h{"key$_"} for grep { $_ % 2 } 1 .. 100000;
print scalar(keys %h), "\n";
