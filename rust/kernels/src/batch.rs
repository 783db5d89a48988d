//! Ragged rows (flat values + offsets) to a padded `[R, L]` batch and its mask.

use crate::error::{KernelError, Result};
use crate::layout::validate_offsets;
use crate::parallel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Right,
    Left,
}

impl Side {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "right" => Ok(Self::Right),
            "left" => Ok(Self::Left),
            other => Err(KernelError::invalid(format!("side must be 'right' or 'left', got '{other}'"))),
        }
    }
}

/// Which rows go into the batch, in order.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    pub offsets: &'a [i64],
    /// Row numbers to gather (repeats allowed); all rows in order when None.
    pub indices: Option<&'a [i64]>,
}

impl Selection<'_> {
    fn num_source_rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    fn row(&self, i: usize) -> usize {
        self.indices.map_or(i, |ix| ix[i] as usize)
    }

    pub fn num_rows(&self) -> usize {
        self.indices.map_or(self.num_source_rows(), <[i64]>::len)
    }

    fn row_len(&self, row: usize) -> usize {
        (self.offsets[row + 1] - self.offsets[row]) as usize
    }

    /// Validates offsets and indices and returns the padded shape `(R, L)`:
    /// `L` is `length` or the longest selected row.
    pub fn padded_shape(&self, values_len: usize, length: Option<usize>) -> Result<(usize, usize)> {
        validate_offsets(self.offsets, values_len, "offsets")?;
        let rows = self.num_source_rows();
        if let Some(ix) = self.indices {
            if let Some((i, &bad)) = ix.iter().enumerate().find(|(_, &r)| r < 0 || r as u64 >= rows as u64) {
                return Err(KernelError::invalid(format!(
                    "indices[{i}] = {bad} is out of range for {rows} rows"
                )));
            }
        }
        let longest = (0..self.num_rows()).map(|i| self.row_len(self.row(i))).max().unwrap_or(0);
        match length {
            Some(len) if longest > len => {
                let i = (0..self.num_rows()).find(|&i| self.row_len(self.row(i)) > len).expect("longest > len");
                Err(KernelError::invalid(format!(
                    "max_length is {len} but row {} holds {} elements; raise max_length or truncate the sequences first",
                    self.row(i),
                    self.row_len(self.row(i))
                )))
            }
            Some(len) => Ok((self.num_rows(), len)),
            None => Ok((self.num_rows(), longest)),
        }
    }
}

/// Fills `padded` (`[R, L]`, row-major) and `mask` from the selected rows.
/// Call [`Selection::padded_shape`] first; this re-checks only the buffer sizes.
pub fn pad_ragged<E: Copy + Send + Sync>(
    values: &[E],
    sel: &Selection<'_>,
    pad: E,
    side: Side,
    length: usize,
    padded: &mut [E],
    mask: &mut [bool],
) -> Result<()> {
    let rows = sel.num_rows();
    if padded.len() != rows * length || mask.len() != rows * length {
        return Err(KernelError::invalid(format!(
            "output buffers must hold {rows} x {length} elements"
        )));
    }
    if length == 0 {
        return Ok(());
    }
    let fill = |(i, (out, m)): (usize, (&mut [E], &mut [bool]))| {
        let row = sel.row(i);
        let (start, end) = (sel.offsets[row] as usize, sel.offsets[row + 1] as usize);
        let n = end - start;
        let at = match side {
            Side::Right => 0,
            Side::Left => length - n,
        };
        out[..at].fill(pad);
        out[at..at + n].copy_from_slice(&values[start..end]);
        out[at + n..].fill(pad);
        m[..at].fill(false);
        m[at..at + n].fill(true);
        m[at + n..].fill(false);
    };
    let elements = padded.len();
    let tasks: Vec<_> = padded.chunks_mut(length).zip(mask.chunks_mut(length)).enumerate().collect();
    parallel::for_each(elements, tasks, fill);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_left_and_right_and_gathers() {
        let values = [1i64, 2, 3, 4, 5, 6];
        let offsets = [0i64, 1, 3, 6];
        let sel = Selection { offsets: &offsets, indices: Some(&[2, 0]) };
        let (r, l) = sel.padded_shape(values.len(), None).unwrap();
        assert_eq!((r, l), (2, 3));
        let (mut p, mut m) = (vec![0i64; 6], vec![false; 6]);
        pad_ragged(&values, &sel, -1, Side::Left, l, &mut p, &mut m).unwrap();
        assert_eq!(p, [4, 5, 6, -1, -1, 1]);
        assert_eq!(m, [true, true, true, false, false, true]);
        let all = Selection { offsets: &offsets, indices: None };
        let (mut p, mut m) = (vec![0i64; 12], vec![false; 12]);
        pad_ragged(&values, &all, 0, Side::Right, 4, &mut p, &mut m).unwrap();
        assert_eq!(p, [1, 0, 0, 0, 2, 3, 0, 0, 4, 5, 6, 0]);
    }

    #[test]
    fn rejects_short_max_length_and_bad_indices() {
        let offsets = [0i64, 3];
        assert!(Selection { offsets: &offsets, indices: None }.padded_shape(3, Some(2)).unwrap_err().message.contains("max_length"));
        assert!(Selection { offsets: &offsets, indices: Some(&[1]) }.padded_shape(3, None).unwrap_err().message.contains("indices[0]"));
    }
}
