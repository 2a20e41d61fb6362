// The Java workload of tests/programs: the JVM's own native memory (its JIT compilers, its
// threads' bookkeeping, zlib's state behind Deflater and Inflater, direct buffers) comes from
// malloc, on many threads at once, while its signal handlers and safepoints do their work.
// Prints checksums that must not depend on the allocator.
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.zip.CRC32;
import java.util.zip.Deflater;
import java.util.zip.Inflater;

public class Workload {
  // Counts words, compresses the counts and decompresses them again; returns a checksum.
  static long task(int seed) throws Exception {
    Map<String, Integer> counts = new HashMap<>();
    for (int i = 0; i < 100_000; i++) counts.merge("w" + (i * 31 + seed) % 3000, 1, Integer::sum);
    StringBuilder text = new StringBuilder();
    for (int i = 0; i < 3000; i++) text.append("w").append(i).append('=').append(counts.get("w" + i)).append('\n');
    byte[] input = text.toString().getBytes("UTF-8");

    Deflater deflater = new Deflater(seed % 10);
    deflater.setInput(input);
    deflater.finish();
    byte[] packed = new byte[input.length + 1024];
    int packedLength = deflater.deflate(packed);
    deflater.end();

    Inflater inflater = new Inflater();
    inflater.setInput(packed, 0, packedLength);
    byte[] unpacked = new byte[input.length];
    int unpackedLength = inflater.inflate(unpacked);
    inflater.end();
    if (unpackedLength != input.length || !java.util.Arrays.equals(unpacked, input)) throw new AssertionError("round trip");

    ByteBuffer direct = ByteBuffer.allocateDirect(64 * 1024 + seed);
    direct.put(input, 0, Math.min(input.length, direct.capacity()));
    direct.flip();
    CRC32 crc = new CRC32();
    crc.update(direct);
    return crc.getValue();
  }

  public static void main(String[] args) throws Exception {
    ExecutorService pool = Executors.newFixedThreadPool(8);
    List<Future<Long>> results = new ArrayList<>();
    for (int t = 0; t < 48; t++) {
      final int seed = t;
      results.add(pool.submit(() -> task(seed)));
    }
    long sum = 0;
    for (Future<Long> result : results) sum += result.get();
    pool.shutdown();
    // Short-lived threads too: each one's native state is made and torn down.
    for (int round = 0; round < 20; round++) {
      Thread[] threads = new Thread[8];
      long[] sums = new long[threads.length];
      for (int i = 0; i < threads.length; i++) {
        final int index = i, seed = 100 + round * threads.length + i;
        threads[i] = new Thread(() -> {
          try { sums[index] = task(seed); } catch (Exception e) { throw new RuntimeException(e); }
        });
        threads[i].start();
      }
      for (int i = 0; i < threads.length; i++) { threads[i].join(); sum += sums[i]; }
    }
    System.out.println("checksum " + sum);
  }
}
