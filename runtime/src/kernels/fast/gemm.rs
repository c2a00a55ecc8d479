//! The one entry to the `gemm` crate: matrices as slices with strides, checked to stay inside
//! their slices before the (unsafe, pointer-based) call.

/// A read-only matrix view: element `(r, c)` is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Mat<'_> {
    /// A row-major `rows x cols` matrix.
    pub fn rows(data: &[f32], rows: usize, cols: usize) -> Mat<'_> {
        Mat { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Mat { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    fn inside(&self, len: usize) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < len
    }
}

/// `dst[m, n] = (accumulate ? dst : 0) + scale * a[m, k] * b[k, n]`, `dst` row-major with rows
/// `dst_stride` apart; `threads > 1` lets the crate split the product over the rayon pool.
/// Panics when the shapes disagree or a view reaches past its slice (a caller bug).
pub(crate) fn gemm(dst: &mut [f32], dst_stride: usize, accumulate: bool, a: Mat, b: Mat, scale: f32, threads: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    let d = Mat { data: dst, rows: m, cols: n, row_stride: dst_stride, col_stride: 1 };
    assert!(a.inside(a.data.len()) && b.inside(b.data.len()) && d.inside(dst.len()), "gemm: a view reaches past its slice");
    if m == 0 || n == 0 {
        return;
    }
    let par = if threads > 1 && m * n * k > 64 * 64 * 64 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: every index the product reads or writes, `(r, c) -> r * row_stride + c *
    // col_stride` for r < rows, c < cols, lies inside its slice (checked above); `dst` is
    // borrowed mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            if accumulate { 1.0f32 } else { 0.0f32 },
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_product_and_bounds() {
        // a: 2x3 row-major, b: 3x2 as the transpose of a 2x3 row-major matrix.
        let a = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let bt = [1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0];
        let mut d = [10.0f32; 4];
        gemm(&mut d, 2, true, Mat::rows(&a, 2, 3), Mat::rows(&bt, 2, 3).t(), 2.0, 1);
        assert_eq!(d, [10.0 + 8.0, 10.0 + 4.0, 10.0 + 20.0, 10.0 + 10.0]);
        let r = std::panic::catch_unwind(|| {
            let mut d = [0.0f32; 3];
            gemm(&mut d, 2, false, Mat::rows(&a, 2, 3), Mat::rows(&bt, 3, 2), 1.0, 1);
        });
        assert!(r.is_err(), "a destination too small is refused");
    }
}
